"""Hostile and careless inputs (issue 13): each ends in a one-line error or a correct
result, within 10 s and 1 GB. Every case runs in a subprocess (tests/fuzz_child.py)
under RLIMIT_AS = 1 GiB and RLIMIT_CPU = 10 s, so a regression that balloons or spins is
caught by the kernel, not by luck; the operation's own wall time is measured too."""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from tests.conftest import DEFAULT_AVATAR

ROOT = Path(__file__).resolve().parents[1]
GB = 1 << 30
LIMIT_S = 10.0


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (GB, GB))
    resource.setrlimit(resource.RLIMIT_CPU, (int(LIMIT_S), int(LIMIT_S)))


def run_case(kind: str, path, env: dict | None = None) -> dict:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
         **(env or {})}
    r = subprocess.run([sys.executable, "-m", "tests.fuzz_child", kind, str(path)], cwd=ROOT, env=e,
                       capture_output=True, text=True, timeout=120, preexec_fn=_limits)
    assert r.returncode == 0, f"{kind} {str(path)[:80]!r}: exit {r.returncode}\n{r.stderr[-3000:]}"
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    out = json.loads(lines[0])
    assert out["s"] <= LIMIT_S, out
    if "error" in out:
        assert "\n" not in out["error"] and len(out["error"]) < 1000, out["error"]
    return out


def expect_error(out: dict, *needles: str) -> None:
    assert "error" in out, f"expected an error, got {out}"
    assert any(n in out["error"] for n in needles), out["error"]


# ---------------------------------------------------------------- images

def _png_gray16(path: Path, w: int, h: int) -> Path:
    """A valid w x h 16-bit grayscale PNG of zeros, streamed: tiny on disk, huge decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * w)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _img(path: Path, im: Image.Image, fmt: str, **kw) -> Path:
    im.save(path, fmt, **kw)
    return path


PORTRAIT = Image.open(DEFAULT_AVATAR).convert("RGB")

IMAGE_ERRORS = {
    "truncated_png": (lambda p: _bytes(p, DEFAULT_AVATAR.read_bytes()[:4000]), ("cannot decode", "not an image")),
    "png_magic_only": (lambda p: _bytes(p, b"\x89PNG\r\n\x1a\n" + b"\0" * 50), ("not an image",)),
    "huge_16bit_png_12000": (lambda p: _png_gray16(p, 12000, 12000), ("MP allowed",)),
    "huge_16bit_png_9000": (lambda p: _png_gray16(p, 9000, 9000), ("MP allowed",)),
    "one_by_huge": (lambda p: _png_gray16(p, 1, 60000), ("too small",)),
    "tiny": (lambda p: _img(p, Image.new("RGB", (8, 8)), "PNG"), ("too small",)),
    "text_as_image": (lambda p: _bytes(p, b"hello" * 100), ("not an image",)),
    "random_bytes_jpeg_header": (lambda p: _bytes(p, b"\xff\xd8\xff\xe0" + os.urandom(5000)),
                                 ("cannot decode", "not an image")),
}


@pytest.mark.parametrize("name", sorted(IMAGE_ERRORS))
def test_hostile_images_give_one_line_errors(tmp_path, name):
    make, needles = IMAGE_ERRORS[name]
    expect_error(run_case("image", make(tmp_path / f"{name}.img")), *needles)


IMAGE_OK = {
    "jpeg_48mp_uses_draft": lambda p: _img(p, PORTRAIT.resize((8000, 6000)), "JPEG", quality=70),
    "png_16bit_gray": lambda p: _img(p, Image.fromarray((np.asarray(PORTRAIT.convert("L"), np.uint16) * 200)),
                                     "PNG"),
    "float_tiff": lambda p: _img(p, Image.fromarray(np.asarray(PORTRAIT.convert("L"), np.float32) * 1e30),
                                 "TIFF"),
    "one_bit": lambda p: _img(p, PORTRAIT.convert("1"), "PNG"),
    "palette_transparent": lambda p: _img(p, PORTRAIT.convert("P"), "PNG", transparency=0),
    "cmyk_jpeg": lambda p: _img(p, PORTRAIT.convert("CMYK"), "JPEG"),
    "animated_gif": lambda p: _img(p, PORTRAIT.convert("P"), "GIF", save_all=True,
                                   append_images=[PORTRAIT.rotate(10).convert("P")]),
}


@pytest.mark.parametrize("name", sorted(IMAGE_OK))
def test_odd_but_valid_images_load(tmp_path, name):
    out = run_case("image", IMAGE_OK[name](tmp_path / f"{name}.img"))
    assert "ok" in out and "uint8" in out["ok"], out


# ---------------------------------------------------------------- special files, all kinds

@pytest.mark.parametrize("kind", ["image", "audio", "config", "prepare_any"])
def test_fifo_dev_zero_folder_and_nul_are_refused(tmp_path, kind):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody ever writes: opening it for reading would block for good
    expect_error(run_case(kind, fifo), "not a regular file")
    expect_error(run_case(kind, "/dev/zero"), "not a regular file")
    expect_error(run_case(kind, tmp_path), "folder")
    expect_error(run_case(kind, tmp_path / "missing"), "not found")


# ---------------------------------------------------------------- audio

def _wav(path: Path, x: np.ndarray, rate: int, subtype: str = "FLOAT") -> Path:
    sf.write(path, x, rate, subtype=subtype)
    return path


def _wav_header(path: Path, rate: int = 16000, channels: int = 1, data_size: int = 0xFFFFFFFF,
                bits: int = 16, payload: bytes = b"\0" * 100) -> Path:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    path.write_bytes(b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                     + b"data" + struct.pack("<I", data_size) + payload)
    return path


AUDIO_ERRORS = {
    "float_1e20": (lambda p: _wav(p, np.full(3200, 1e20, np.float32), 16000), ("exceed",)),
    "nan": (lambda p: _wav(p, np.full(3200, np.nan, np.float32), 16000), ("NaN",)),
    "rate_1hz": (lambda p: _wav(p, np.zeros(16, np.float32), 1), ("sample rate",)),
    "rate_huge": (lambda p: _wav_header(p, rate=2_000_000_000), ("sample rate", "cannot read")),
    "zero_channels": (lambda p: _wav_header(p, channels=0), ("cannot read", "channels")),
    "empty": (lambda p: _wav(p, np.zeros(0, np.float32), 16000), ("empty",)),
    "garbage": (lambda p: _bytes(p, os.urandom(4000)), ("cannot read",)),
    "header_only": (lambda p: _bytes(p, b"RIFF\xff\xff\xff\xffWAVE"), ("cannot read",)),
}


@pytest.mark.parametrize("name", sorted(AUDIO_ERRORS))
def test_hostile_wavs_give_one_line_errors(tmp_path, name):
    make, needles = AUDIO_ERRORS[name]
    expect_error(run_case("audio", make(tmp_path / f"{name}.wav")), *needles)


AUDIO_OK = {
    "huge_declared_size_truncated": lambda p: _wav_header(p, payload=b"\x10\x00" * 8000),
    "rate_8k_stereo_int": lambda p: _wav(p, np.full((800, 2), 0.1, np.float32), 8000, "PCM_16"),
    "rate_192k": lambda p: _wav(p, np.full(19200, 0.1, np.float32), 192000),
    "slightly_over_full_scale": lambda p: _wav(p, np.full(1600, 1.5, np.float32), 16000),
    "one_sample": lambda p: _wav(p, np.full(1, 0.5, np.float32), 16000),
}


@pytest.mark.parametrize("name", sorted(AUDIO_OK))
def test_odd_but_valid_wavs_load(tmp_path, name):
    out = run_case("audio", AUDIO_OK[name](tmp_path / f"{name}.wav"))
    assert "ok" in out and "samples" in out["ok"], out


# ---------------------------------------------------------------- config

def _alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"video: {{fps: *a{levels - 1}}}")
    return "\n".join(lines) + "\n"


CONFIG_ERRORS = {
    "alias_bomb": (lambda p: p.write_text(_alias_bomb()), ("aliases",)),
    "few_aliases_huge_value": (lambda p: p.write_text(
        'x: &x "' + "A" * 5000 + '"\nvideo: {fps: *x}\n'), ("video.fps: must be an integer",)),
    "deep_nesting": (lambda p: p.write_text("[" * 20000 + "]" * 20000), ("nested",)),
    "deep_mapping": (lambda p: p.write_text("".join(f"{' ' * i}k{i}:\n" for i in range(200)) + " " * 200 + "v\n"),
                     ("nested",)),
    "nul_byte_raw": (lambda p: p.write_bytes(b"video:\n  fps: 25\0\n"), ("NUL",)),
    "nul_in_avatar_path": (lambda p: p.write_text('avatar: {image: "/tmp/a\\0b.png"}\n'), ("control characters",)),
    "newline_in_device": (lambda p: p.write_text('audio: {input: "mic\\nExecStartPre=/bin/sh"}\n'),
                          ("control characters",)),
    "binary": (lambda p: p.write_bytes(os.urandom(3000)), ("cannot read", "invalid YAML")),
    "too_big": (lambda p: p.write_text("# " + "x" * (2 << 20)), ("MB allowed",)),
    "many_unknown_keys": (lambda p: p.write_text("".join(f"k{i}: 1\n" for i in range(5000))), ("more problems",)),
    "avatar_is_fifo": (lambda p: (os.mkfifo(p.with_name("face.png")),
                                  p.write_text(f"avatar: {{image: {p.with_name('face.png')}}}\n")),
                       ("not a regular file",)),
    "avatar_is_dev_zero": (lambda p: p.write_text("avatar: {image: /dev/zero}\n"), ("not a regular file",)),
}


@pytest.mark.parametrize("name", sorted(CONFIG_ERRORS))
def test_hostile_configs_give_one_line_errors(tmp_path, name):
    make, needles = CONFIG_ERRORS[name]
    p = tmp_path / "config.yaml"
    make(p)
    expect_error(run_case("config", p), *needles)


def test_check_config_cli_refuses_a_fifo_avatar(tmp_path):
    os.mkfifo(tmp_path / "face.png")
    (tmp_path / "c.yaml").write_text(f"avatar: {{image: {tmp_path / 'face.png'}}}\n")
    r = subprocess.run([sys.executable, "-m", "vcam_talker", "check-config", str(tmp_path / "c.yaml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, preexec_fn=_limits)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "avatar.image: is not a regular file" in r.stderr


# ---------------------------------------------------------------- cache

@pytest.fixture(scope="module")
def good_cache(tmp_path_factory) -> Path:
    """A valid cache entry for the default avatar, made by the real prepare."""
    d = tmp_path_factory.mktemp("cache")
    out = run_case("prepare", DEFAULT_AVATAR, env={"VCAM_TALKER_CACHE": str(d)})
    assert out["ok"].startswith("from_cache=False"), out
    (f,) = d.rglob("*.npz")
    return f


def _tamper(src: Path, dst: Path, **change) -> None:
    """Rewrite the .npz with arrays replaced (meta kept unless given)."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(change)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    dst.write_bytes(buf.getvalue())


def _meta(src: Path) -> dict:
    with np.load(src, allow_pickle=False) as z:
        return json.loads(z["meta"].tobytes().decode())


def _meta_array(meta: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(meta).encode(), np.uint8)


TAMPER = {
    "wrong_image_shape": lambda f: {"image": np.zeros((10, 10, 3), np.uint8)},
    "wrong_image_shape_meta_agrees": lambda f: {
        "image": np.zeros((256, 256, 3), np.uint8),
        "meta": _meta_array({**_meta(f), "arrays": {**_meta(f)["arrays"], "image": ["|u1", [256, 256, 3]]}})},
    "bomb_image_1_5gb": lambda f: {
        "image": np.zeros((22000, 22000, 3), np.uint8),
        "meta": _meta_array({**_meta(f), "arrays": {**_meta(f)["arrays"], "image": ["|u1", [22000, 22000, 3]]}})},
    "nan_landmarks": lambda f: {"landmarks": np.full((68, 2), np.nan, np.float32)},
    "rig_box_out_of_frame": lambda f: {"data.head_box": np.array([0, 0, 10 ** 6, 10 ** 6], np.int32)},
    "meta_other_engine": lambda f: {"meta": _meta_array({**_meta(f), "engine": "sadtalker"})},
    "meta_other_image": lambda f: {"meta": _meta_array({**_meta(f), "sha256": "0" * 64})},
    "meta_not_json": lambda f: {"meta": np.frombuffer(b"{nope", np.uint8)},
    "extra_object_array": lambda f: {"data.extra": np.zeros(3)},
}


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_tampered_cache_is_rebuilt(tmp_path, good_cache, name):
    if name == "bomb_image_1_5gb":
        # 1.45 GB of zeros, deflated to ~1.4 MB: the zip header tells, nothing is inflated
        pytest.importorskip("zipfile")
    d = tmp_path / "cache"
    dst = d / good_cache.relative_to(good_cache.parents[1])
    dst.parent.mkdir(parents=True)
    _tamper(good_cache, dst, **TAMPER[name](good_cache))
    out = run_case("prepare", DEFAULT_AVATAR, env={"VCAM_TALKER_CACHE": str(d)})
    assert out.get("ok", "").startswith("from_cache=False frame (512, 512, 3)"), out
    # the rebuilt entry is valid again, and used
    out = run_case("prepare", DEFAULT_AVATAR, env={"VCAM_TALKER_CACHE": str(d)})
    assert out.get("ok", "").startswith("from_cache=True"), out


# ---------------------------------------------------------------- systemd unit paths

UNIT_OK = ["/home/u/my configs/config.yaml", "/home/u/%h/%n/config.yaml", "/home/u/$HOME/${X}/c.yaml",
           "/home/u/a\"b'c\\d;e/config.yaml", "/home/u/ünïcødé/config.yaml", "/home/u/;/config.yaml"]
UNIT_BAD = ["/home/u/x\nExecStartPre=/bin/sh -c 'id'/config.yaml", "/home/u/x\rY/config.yaml",
            "/home/u/tab\there/c.yaml", "/home/u/esc\x1b[31m/c.yaml", "/home/u/del\x7f/c.yaml"]


@pytest.mark.parametrize("path", UNIT_OK)
def test_hostile_unit_paths_are_escaped(path):
    out = run_case("unit", path)
    assert "ok" in out, out
    assert "%h" not in out["ok"].replace("%%", "") and "$HOME" not in out["ok"].replace("$$", "")


@pytest.mark.parametrize("path", UNIT_BAD)
def test_control_characters_in_unit_paths_are_refused(path):
    expect_error(run_case("unit", path), "control characters")
