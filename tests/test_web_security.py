"""vcam_talker/web/security.py and avatars.py's pure parts as tables: which Host and
Origin headers pass, the token, its file, avatar names, the config edit, uploads."""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vcam_talker import config as config_mod
from vcam_talker.web import avatars, security

# (Host header, bound host, port, allowed)
HOSTS = [
    ("127.0.0.1:8765", "127.0.0.1", 8765, True),
    ("localhost:8765", "127.0.0.1", 8765, True),
    ("LOCALHOST:8765", "127.0.0.1", 8765, True),
    ("[::1]:8765", "127.0.0.1", 8765, False),  # not where a 127.0.0.1 bind can be reached
    ("127.0.0.1", "127.0.0.1", 8765, False),  # port 80 implied
    ("127.0.0.1:8766", "127.0.0.1", 8765, False),
    ("evil.example:8765", "127.0.0.1", 8765, False),  # DNS rebinding
    ("127.0.0.1.evil.example:8765", "127.0.0.1", 8765, False),
    ("localhost.:8765", "127.0.0.1", 8765, False),
    ("", "127.0.0.1", 8765, False),
    (None, "127.0.0.1", 8765, False),
    ("[::1]:8765", "::1", 8765, True),
    ("localhost:8765", "::1", 8765, True),
    ("127.0.0.1:8765", "::1", 8765, False),
    ("127.0.0.1:8765", "localhost", 8765, True),
    ("[::1]:8765", "localhost", 8765, True),
    ("127.0.0.1", "127.0.0.1", 80, True),
    ("localhost", "127.0.0.1", 80, True),
    ("127.0.0.2:8765", "127.0.0.2", 8765, True),
    ("localhost:8765", "127.0.0.2", 8765, False),
    ("192.168.1.5:8765", "192.168.1.5", 8765, True),
    ("localhost:8765", "192.168.1.5", 8765, False),
    ("evil.example:8765", "192.168.1.5", 8765, False),
    ("anything:1", "0.0.0.0", 8765, True),  # wildcard: the token is the check there
    ("anything:1", "", 8765, True),
]


@pytest.mark.parametrize("host,bound,port,ok", HOSTS)
def test_host_allowed(host, bound, port, ok):
    assert security.host_allowed(host, bound, port) is ok


# (Origin, Host, allowed)
ORIGINS = [
    ("http://127.0.0.1:8765", "127.0.0.1:8765", True),
    ("http://localhost:8765", "localhost:8765", True),
    ("http://localhost:8765", "127.0.0.1:8765", False),  # another origin, even if the same machine
    ("https://127.0.0.1:8765", "127.0.0.1:8765", False),
    ("http://127.0.0.1:8766", "127.0.0.1:8765", False),
    ("http://evil.example", "127.0.0.1:8765", False),
    ("null", "127.0.0.1:8765", False),
    ("", "127.0.0.1:8765", False),
    (None, "127.0.0.1:8765", False),
    ("http://127.0.0.1:8765/", "127.0.0.1:8765", False),
    ("http://[::1]:8765", "[::1]:8765", True),
    ("http://127.0.0.1:8765", None, False),
]


@pytest.mark.parametrize("origin,host,ok", ORIGINS)
def test_origin_allowed(origin, host, ok):
    assert security.origin_allowed(origin, host) is ok


TOKEN = "abcdefghijklmnopqrstuvwxyz012345"


@pytest.mark.parametrize("given,expected,ok", [
    (TOKEN, TOKEN, True), (TOKEN[:-1], TOKEN, False), (TOKEN + "x", TOKEN, False), ("", TOKEN, False),
    (None, TOKEN, False), ("", "", False), ("x", "", False), ("ü" * 4, TOKEN, False)])
def test_token_ok(given, expected, ok):
    assert security.token_ok(given, expected) is ok


@pytest.mark.parametrize("addr,want", [
    ("127.0.0.1:8765", ("127.0.0.1", 8765)), ("[::1]:80", ("::1", 80)), ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("localhost:1", ("localhost", 1)), (":8765", ("", 8765)),
    ("127.0.0.1", ValueError), ("127.0.0.1:x", ValueError), ("127.0.0.1:70000", ValueError),
    ("[::1:80", ValueError), ("fe80::zz:80", ValueError)])
def test_split_addr(addr, want):
    if want is ValueError:
        with pytest.raises(ValueError):
            security.split_addr(addr)
    else:
        assert security.split_addr(addr) == want


def test_token_file_created_once_private_and_reused(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    path = security.token_path(env)
    assert path == tmp_path / "state" / "vcam-talker" / "token"
    t1 = security.install_token(path)
    assert len(t1) >= 40 and security.token_problem(t1) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert security.install_token(path) == t1 == security.read_token(path)
    assert os.listdir(path.parent) == ["token"]  # no temporary file left
    path.write_text("\n")  # an emptied file is replaced
    t2 = security.install_token(path)
    assert t2 != t1 and security.read_token(path) == t2
    assert security.token_path({}) == Path(os.path.expanduser("~/.local/state/vcam-talker/token"))


@pytest.mark.parametrize("section,error", [
    ({"status": {"http": "0.0.0.0:8765"}}, "control.token: must be set"),
    ({"status": {"http": "192.168.1.5:8765"}}, "control.token: must be set"),
    ({"control": {"token": "short"}}, "control.token: must be at least 16"),
    ({"control": {"token": "a" * 20 + " "}}, "control.token: may contain only"),
    ({"status": {"http": "127.0.0.1"}}, "status.http: must be HOST:PORT"),
    ({"status": {"http": "0.0.0.0:8765"}, "control": {"token": TOKEN}}, None),
    ({"status": {"http": "[::1]:8765"}}, None),
    ({"status": {"http": ""}}, None),
])
def test_config_validation(section, error):
    if error is None:
        config_mod.from_dict(section)
    else:
        with pytest.raises(config_mod.ConfigError, match=error):
            config_mod.from_dict(section)


def test_check_config_names_the_token_field(tmp_path):
    from vcam_talker import cli

    p = tmp_path / "c.yaml"
    p.write_text("status:\n  http: 0.0.0.0:8765\n")
    with pytest.raises(config_mod.ConfigError, match=r"control\.token"):
        cli.cmd_check_config(type("A", (), {"path": str(p)})())


# ---- avatars --------------------------------------------------------------------------
def png_bytes(w: int = 64, h: int = 48, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, len(mode)), np.uint8).squeeze(),
                    mode if mode != "L" else None).save(buf, format="PNG")
    return buf.getvalue()


def claim_size(png: bytes, w: int, h: int) -> bytes:
    """A PNG whose header claims w x h (CRC fixed, so it passes the header checks)."""
    ihdr = png[16:29]
    new = struct.pack(">II", w, h) + ihdr[8:]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + new))
    return png[:16] + new + crc + png[33:]


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "share" / "avatars"
    d.mkdir(parents=True)
    (d / "a.png").write_bytes(png_bytes())
    (d / "b.JPG").write_bytes(b"x")
    (d / "notes.txt").write_text("x")
    (d / "sub").mkdir()
    (d / "sub" / "c.png").write_bytes(png_bytes())
    (tmp_path / "outside.png").write_bytes(png_bytes())
    (d / "link.png").symlink_to(tmp_path / "outside.png")
    return d


def test_list_avatars(folder, tmp_path):
    assert avatars.list_avatars(folder) == ["a.png", "b.JPG"]  # no text, folder or link out
    assert avatars.list_avatars(tmp_path / "missing") == []


@pytest.mark.parametrize("name,status", [
    ("a.png", None), ("../outside.png", 400), ("/etc/passwd", 400), ("..", 400), ("sub/c.png", 400),
    ("link.png", 400), ("notes.txt", 400), ("missing.png", 404), ("", 400), (None, 400), (3, 400),
    (".a.png", 400), ("a.png\0.png", 400), ("x" * 300 + ".png", 400), ("..\\outside.png", 400)])
def test_resolve_names(folder, name, status):
    if status is None:
        assert avatars.resolve(folder, name) == (folder / name).resolve()
    else:
        with pytest.raises(avatars.AvatarError) as e:
            avatars.resolve(folder, name)
        assert e.value.status == status


SHIPPED = Path(__file__).resolve().parents[1] / "config.yaml"


@pytest.mark.parametrize("text", [
    SHIPPED.read_text(),  # the commented block form: edited in place, comments kept
    "avatar:\n  face_scale: 0.4\nvideo:\n  fps: 20\n",  # no image line yet
    "video:\n  fps: 20\n",  # no avatar section
    "avatar: {image: old.png, face_scale: 0.4}\n",  # flow style: dumped anew
    "",
    "avatar:\n    image: 'x #y.png'   # four-space indent\n",
])
def test_set_avatar_changes_only_the_image(text):
    new = avatars.set_avatar(text, "/pics/my face #1.png")
    before = yaml.safe_load(text) or {}
    after = yaml.safe_load(new)
    assert after["avatar"]["image"] == "/pics/my face #1.png"
    before.setdefault("avatar", {})["image"] = "/pics/my face #1.png"
    assert after == before
    if text == SHIPPED.read_text():
        assert new.count("\n") == text.count("\n") and "# The portrait to animate" in new


def test_select_writes_the_config_atomically(folder, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("# mine\navatar:\n  image: default\n")
    os.chmod(cfg, 0o640)
    assert avatars.select(cfg, folder, "a.png") == (folder / "a.png").resolve()
    assert yaml.safe_load(cfg.read_text())["avatar"]["image"] == str((folder / "a.png").resolve())
    assert cfg.read_text().startswith("# mine\n") and stat.S_IMODE(cfg.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "outside.png", "share"]
    with pytest.raises(avatars.AvatarError) as e:
        avatars.select(None, folder, "a.png")
    assert e.value.status == 409


def test_store_upload(folder):
    before = sorted(os.listdir(folder))
    name = avatars.store_upload(folder, png_bytes(80, 60))
    assert name.startswith("upload-") and name.endswith(".png")
    assert sorted(os.listdir(folder)) == sorted(before + [name])
    with Image.open(folder / name) as im:
        assert im.format == "PNG" and im.size == (80, 60)
    assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    jpg = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(jpg, format="JPEG")
    assert avatars.store_upload(folder, jpg.getvalue()).endswith(".png")


@pytest.mark.parametrize("data,status", [
    (b"hello, this is text\n", 400),
    (b"", 400),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, 400),
    (claim_size(png_bytes(8, 8), 30000, 30000), 413),  # a decompression bomb
    (claim_size(png_bytes(8, 8), 8000, 6000), 413),  # 48 MP: over our cap, under Pillow's
    (png_bytes(8, 8)[:-20], 400),  # truncated
    (b"GIF89a" + b"\0" * 50, 400),
    (b"\0" * (avatars.MAX_UPLOAD_BYTES + 1), 413),
])
def test_store_upload_refuses(folder, data, status):
    before = sorted(os.listdir(folder)), sorted(os.listdir(folder.parent))
    with pytest.raises(avatars.AvatarError) as e:
        avatars.store_upload(folder, data)
    assert e.value.status == status
    assert (sorted(os.listdir(folder)), sorted(os.listdir(folder.parent))) == before
