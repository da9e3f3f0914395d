"""Weights manifest, download (resume, servers ignoring Range, cut connections), verify, CLI.

A real HTTP server on 127.0.0.1 serves random files; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from pathlib import Path

import pytest
import yaml

from vcam_talker import weights as W
from vcam_talker.cli import main

SIZE_A = 300_000
SIZE_B = 200_000


class Server:
    """A ThreadingHTTPServer whose behaviour a test switches with ``mode``:

    - ``range``: honours ``Range: bytes=N-`` with 206;
    - ``ignore-range``: always sends the whole file with 200;
    - ``cut-once`` / ``cut-always``: announce the full length, send half, close (once / every time).
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.mode = "range"
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cuts = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and server.mode != "ignore-range":
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.mode == "cut-always" or (server.mode == "cut-once" and server.cuts == 0)
                if cut:
                    server.cuts += 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.close()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def rand(n: int, seed: int) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def write_manifest(path: Path, files: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"files": files}, sort_keys=False))
    return path


def spec(server: Server, name: str, data: bytes, groups=("grp",), *, pin=True, size=True, **over) -> dict:
    server.files["/" + name] = data
    d = {"name": name, "url": server.base + "/" + name, "size": len(data) if size else None,
         "sha256": sha(data) if pin else None, "groups": list(groups),
         "purpose": "test file", "license": "test"}
    d.update(over)
    return d


@pytest.fixture()
def setup(tmp_path, server, monkeypatch):
    """Two pinned files in group 'grp' plus one unpinned in 'loose'; $VCAM_TALKER_MANIFEST set."""
    a, b, c = rand(SIZE_A, 1), rand(SIZE_B, 2), rand(50_000, 3)
    man = write_manifest(tmp_path / "manifest.yaml", [
        spec(server, "a.bin", a), spec(server, "b.bin", b), spec(server, "c.bin", c, ("loose",), pin=False)])
    monkeypatch.setenv("VCAM_TALKER_MANIFEST", str(man))
    monkeypatch.delenv("VCAM_TALKER_WEIGHTS", raising=False)
    d = tmp_path / "w"
    return W.load_manifest(), d, {"a.bin": a, "b.bin": b, "c.bin": c}


# ---------------------------------------------------------------- download and verify


def test_download_then_verify_ok(setup, server):
    man, d, data = setup
    W.download(man.group("grp"), d, progress=False)
    for e in man.group("grp"):
        assert (d / e.name).read_bytes() == data[e.name]
        r = W.verify_file(e, d)
        assert (r.status, r.sha256, r.failed) == ("ok", e.sha256, False)
    assert sorted(p.name for p in d.iterdir()) == ["a.bin", "b.bin"]  # no .part left
    n = len(server.requests)
    W.download(man.group("grp"), d, progress=False)  # already valid: nothing fetched
    assert len(server.requests) == n


def test_interrupted_download_keeps_part_and_resumes_with_range(setup, server):
    man, d, data = setup
    e = man.entry("a.bin")
    server.mode = "cut-always"
    with pytest.raises(W.WeightsError) as ei:
        W.download([e], d, progress=False, retries=0)
    msg = str(ei.value)
    assert "\n" not in msg and "a.bin" in msg and e.url in msg and "interrupted" in msg
    part = d / "a.bin.part"
    n = part.stat().st_size
    assert 0 < n < SIZE_A and part.read_bytes() == data["a.bin"][:n]
    assert not (d / "a.bin").exists()

    server.mode = "range"
    W.download([e], d, progress=False)
    assert server.ranges("/a.bin")[-1] == f"bytes={n}-"
    assert (d / "a.bin").read_bytes() == data["a.bin"]
    assert not part.exists()
    assert W.verify_file(e, d).status == "ok"


def test_cut_connection_is_retried_within_one_call(setup, server):
    man, d, data = setup
    server.mode = "cut-once"
    W.download([man.entry("b.bin")], d, progress=False)
    ranges = server.ranges("/b.bin")
    assert ranges[0] is None and ranges[1] == f"bytes={SIZE_B // 2}-"
    assert (d / "b.bin").read_bytes() == data["b.bin"]


def test_server_ignoring_range_restarts_from_zero(setup, server):
    man, d, data = setup
    d.mkdir()
    (d / "a.bin.part").write_bytes(b"\xff" * 1000)  # wrong bytes: only a restart can fix them
    server.mode = "ignore-range"
    W.download([man.entry("a.bin")], d, progress=False)
    assert server.ranges("/a.bin") == ["bytes=1000-"]  # asked to resume, got a 200
    assert (d / "a.bin").read_bytes() == data["a.bin"]
    assert not (d / "a.bin.part").exists()


def test_complete_part_is_finished_without_network(setup, server):
    man, d, data = setup
    d.mkdir()
    (d / "a.bin.part").write_bytes(data["a.bin"])
    W.download([man.entry("a.bin")], d, progress=False)
    assert server.ranges("/a.bin") == []
    assert (d / "a.bin").read_bytes() == data["a.bin"]


def test_size_unknown_complete_part_gets_416_and_is_kept(tmp_path, server):
    data = rand(20_000, 7)
    man = W.load_manifest(write_manifest(tmp_path / "m.yaml", [spec(server, "u.bin", data, size=False)]))
    d = tmp_path / "w"
    d.mkdir()
    (d / "u.bin.part").write_bytes(data)
    W.download(list(man.files), d, progress=False)
    assert server.ranges("/u.bin") == ["bytes=20000-"]  # answered 416: nothing more to fetch
    assert (d / "u.bin").read_bytes() == data


def test_overlong_part_is_discarded(setup, server):
    man, d, data = setup
    d.mkdir()
    (d / "b.bin.part").write_bytes(b"\0" * (SIZE_B + 10))
    W.download([man.entry("b.bin")], d, progress=False)
    assert server.ranges("/b.bin") == [None]
    assert (d / "b.bin").read_bytes() == data["b.bin"]


def test_concurrent_download_of_same_file_is_refused(setup):
    import fcntl

    man, d, data = setup
    d.mkdir()
    with open(d / "a.bin.part", "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(W.WeightsError, match=r"a\.bin: another download of it is running"):
            W.download([man.entry("a.bin")], d, progress=False)


def test_sha256_mismatch_deletes_download(tmp_path, server):
    good, served = rand(100_000, 4), rand(100_000, 5)
    man = write_manifest(tmp_path / "m.yaml", [spec(server, "x.bin", served, sha256=sha(good))])
    e = W.load_manifest(man).entry("x.bin")
    d = tmp_path / "w"
    with pytest.raises(W.WeightsError) as ei:
        W.download([e], d, progress=False)
    msg = str(ei.value)
    assert "\n" not in msg and "x.bin" in msg and sha(good) in msg and sha(served) in msg
    assert not (d / "x.bin").exists() and not (d / "x.bin.part").exists()


def test_size_announced_by_server_differs_from_manifest(tmp_path, server):
    data = rand(10_000, 6)
    man = write_manifest(tmp_path / "m.yaml", [spec(server, "s.bin", data, size=False)])
    raw = yaml.safe_load(man.read_text())
    raw["files"][0]["size"] = 12_345
    man.write_text(yaml.safe_dump(raw))
    with pytest.raises(W.WeightsError, match=r"s\.bin: .* serves 10000 bytes but the manifest expects 12345"):
        W.download(W.load_manifest(man).files, tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "s.bin").exists()


def test_network_errors_name_the_url(tmp_path, server):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    files = [spec(server, "gone.bin", b"x" * 10),
             {**spec(server, "dead.bin", b"y" * 10), "url": f"http://127.0.0.1:{dead}/dead.bin"}]
    del server.files["/gone.bin"]
    man = W.load_manifest(write_manifest(tmp_path / "m.yaml", files))
    with pytest.raises(W.WeightsError, match=rf"gone\.bin: HTTP 404 .* from {re.escape(server.base)}/gone\.bin"):
        W.download([man.entry("gone.bin")], tmp_path, progress=False)
    with pytest.raises(W.WeightsError, match=rf"dead\.bin: cannot reach http://127\.0\.0\.1:{dead}/dead\.bin"):
        W.download([man.entry("dead.bin")], tmp_path, progress=False, timeout=5)
    assert not list(tmp_path.glob("*.part"))  # no empty leftovers


def test_unpinned_entry_downloads_and_verifies_as_unpinned(setup):
    man, d, data = setup
    e = man.entry("c.bin")
    assert e.sha256 is None
    W.download([e], d, progress=False)
    r = W.verify_file(e, d)
    assert r.status == "unpinned" and not r.failed
    assert r.sha256 == sha(data["c.bin"])
    assert r.line() == f"c.bin: present, no pinned sha256 (size checked only); sha256 {sha(data['c.bin'])}"


def test_verify_statuses(setup):
    man, d, data = setup
    d.mkdir()
    a, b = man.entry("a.bin"), man.entry("b.bin")
    assert W.verify_file(a, d).status == "missing"
    (d / "a.bin").write_bytes(data["a.bin"][:-1])
    r = W.verify_file(a, d)
    assert (r.status, r.size, r.failed) == ("size-mismatch", SIZE_A - 1, True)
    flipped = bytearray(data["b.bin"])
    flipped[7] ^= 1
    (d / "b.bin").write_bytes(flipped)
    r = W.verify_file(b, d)
    assert (r.status, r.sha256, r.failed) == ("sha256-mismatch", sha(bytes(flipped)), True)
    assert b.sha256 in r.line() and r.sha256 in r.line()


def test_missing_for_lists_exactly_the_missing(tmp_path, server):
    files = [spec(server, f"f{i}.bin", rand(1000 + i, i), ("g",)) for i in range(3)]
    files.append(spec(server, "other.bin", rand(10, 9), ("h",)))
    man = W.load_manifest(write_manifest(tmp_path / "m.yaml", files))
    d = tmp_path / "w"
    d.mkdir()
    (d / "f0.bin").write_bytes(b"\0" * 1000)  # right size: present (no hashing here)
    (d / "f1.bin").write_bytes(b"\0" * 5)  # wrong size
    assert [e.name for e in W.missing_for("g", d, man)] == ["f1.bin", "f2.bin"]
    assert [e.name for e in W.missing_for("h", d, man)] == ["other.bin"]
    with pytest.raises(W.ManifestError, match="unknown weights group 'nope'; known groups: g, h"):
        W.missing_for("nope", d, man)


# ---------------------------------------------------------------- manifest


GOOD = {"name": "x.bin", "url": "https://example.org/x.bin", "size": 10, "sha256": "ab" * 32,
        "groups": ["g"], "purpose": "p", "license": "l"}


@pytest.mark.parametrize("files, message", [
    ([{**GOOD, "sha": "x"}], r"files\[0\] \(x\.bin\): unknown key 'sha'"),
    ([{**GOOD, "sha256": "xyz"}], r"files\[0\] \(x\.bin\): sha256 must be 64 lowercase hex digits or null, got 'xyz'"),
    ([{**GOOD, "sha256": "AB" * 32}], r"sha256 must be 64 lowercase hex"),
    ([GOOD, {**GOOD, "groups": ["h"]}], r"files\[1\] \(x\.bin\): duplicate name"),
    ([{k: v for k, v in GOOD.items() if k != "sha256"}], r"files\[0\] \(x\.bin\): missing key 'sha256'"),
    ([{**GOOD, "size": -1}], r"size must be a positive number of bytes or null"),
    ([{**GOOD, "url": "ftp://x/y"}], r"url must be an http\(s\) URL"),
    ([{**GOOD, "name": "../x"}], r"name must be a plain file name"),
    ([{**GOOD, "groups": []}], r"groups must be a non-empty list"),
    ([{**GOOD, "location": "moon"}], r"location must be one of weights, torch-hub"),
    ([{**GOOD, "groups": ["y.bin"]}, {**GOOD, "name": "y.bin"}], r"group name 'y\.bin' is also a file name"),
    ([], r"'files' is empty"),
])
def test_invalid_manifest_one_line_errors(tmp_path, files, message):
    p = write_manifest(tmp_path / "m.yaml", files)
    with pytest.raises(W.ManifestError) as ei:
        W.load_manifest(p)
    assert "\n" not in str(ei.value)
    assert re.search(message, str(ei.value)), str(ei.value)
    assert str(p) in str(ei.value)


def test_manifest_shape_and_yaml_errors(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("files: [\n  oops")
    with pytest.raises(W.ManifestError, match=r"invalid YAML at line \d+"):
        W.load_manifest(p)
    p.write_text("version: 1\nfiles: []\n")
    with pytest.raises(W.ManifestError, match="exactly one key, 'files:'"):
        W.load_manifest(p)
    with pytest.raises(W.ManifestError, match="weights manifest not found"):
        W.load_manifest(tmp_path / "absent.yaml")


def test_env_overrides_and_locations(tmp_path, monkeypatch):
    p = write_manifest(tmp_path / "m.yaml", [GOOD, {**GOOD, "name": "hub.pth", "location": "torch-hub"}])
    monkeypatch.setenv("VCAM_TALKER_MANIFEST", str(p))
    monkeypatch.setenv("VCAM_TALKER_WEIGHTS", str(tmp_path / "wdir"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    man = W.load_manifest()
    assert man.source == p
    assert W.default_dir() == tmp_path / "wdir"
    assert W.path_for(man.entry("x.bin")) == tmp_path / "wdir" / "x.bin"
    assert W.path_for(man.entry("hub.pth"), tmp_path / "ignored") == tmp_path / "th" / "hub" / "checkpoints" / "hub.pth"
    monkeypatch.delenv("VCAM_TALKER_WEIGHTS")
    assert W.default_dir() == W.REPO_WEIGHTS  # this checkout has weights/manifest.yaml


def test_real_manifest():
    man = W.load_manifest(W.REPO_WEIGHTS / "manifest.yaml")
    for e in man.files:
        assert e.url.startswith("https://"), e.name
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256), e.name
        assert e.license and e.purpose
        # torch hub convention: a hex in the file name is a sha256 prefix
        m = re.search(r"-([0-9a-f]{8,})\.", e.name)
        if m and e.sha256:
            assert e.sha256.startswith(m.group(1)), e.name
    assert {e.name for e in man.group("sadtalker-256")} == {
        "SadTalker_V0.0.2_256.safetensors", "mapping_00229-model.pth.tar", "mapping_00109-model.pth.tar"}
    assert {e.name for e in man.group("sadtalker-512")} == {
        "SadTalker_V0.0.2_512.safetensors", "mapping_00229-model.pth.tar", "mapping_00109-model.pth.tar"}
    for g in ("face-alignment", "facexlib"):
        assert man.group(g)
    # landmarks.py looks for 2DFAN4* and s3fd* in torch hub's checkpoints
    fa = man.group("face-alignment")
    assert all(e.location == "torch-hub" for e in fa)
    assert any(e.name.startswith("2DFAN4") for e in fa) and any(e.name.startswith("s3fd") for e in fa)
    # the combined checkpoint holds 724,908,512 tensor bytes plus its header
    assert man.entry("SadTalker_V0.0.2_256.safetensors").size > 724_908_512


# ---------------------------------------------------------------- CLI


def test_cli_download_verify_list(setup, capsys):
    man, d, data = setup
    assert main(["weights", "download", "--only", "grp", "loose", "--dir", str(d), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"a.bin: ok (sha256 {sha(data['a.bin'])})" in out
    assert f"c.bin: present, no pinned sha256 (size checked only); sha256 {sha(data['c.bin'])}" in out

    assert main(["weights", "download", "--only", "a.bin", "--dir", str(d), "-q"]) == 0
    assert "(already present)" in capsys.readouterr().out

    assert main(["weights", "verify", "--dir", str(d), "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("a.bin: ok") and "no pinned sha256" in lines[2]

    assert main(["weights", "list", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^a\.bin\s+293\.0 KiB\s+grp\s+yes$", out, re.M), out
    assert re.search(r"^c\.bin\s+48\.8 KiB\s+loose\s+yes$", out, re.M), out

    flipped = bytearray(data["b.bin"])
    flipped[0] ^= 1
    (d / "b.bin").write_bytes(flipped)
    (d / "c.bin").unlink()
    assert main(["weights", "verify", "--dir", str(d), "-q"]) == 1
    out = capsys.readouterr().out
    assert f"b.bin: FAILED sha256-mismatch: got {sha(bytes(flipped))}, expected {sha(data['b.bin'])}" in out
    assert "c.bin: missing" in out  # missing is reported, but only the bad file fails
    assert "1 file(s) failed" in out

    assert main(["weights", "download", "--only", "b.bin", "--dir", str(d), "-q"]) == 0
    assert "FAILED sha256-mismatch" in capsys.readouterr().out  # reported, then replaced
    assert (d / "b.bin").read_bytes() == data["b.bin"]


def test_cli_errors_are_one_line(setup, server, capsys):
    man, d, data = setup
    assert main(["weights", "download", "--only", "nope", "--dir", str(d)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err and "groups: grp, loose" in err
    del server.files["/a.bin"]
    assert main(["weights", "download", "--only", "a.bin", "--dir", str(d)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 404" in err and server.base + "/a.bin" in err


def test_cli_default_group_is_sadtalker_256(tmp_path, server, monkeypatch, capsys):
    files = [spec(server, "s256.bin", rand(100, 1), ("sadtalker-256",)), spec(server, "other.bin", rand(100, 2))]
    monkeypatch.setenv("VCAM_TALKER_MANIFEST", str(write_manifest(tmp_path / "m.yaml", files)))
    monkeypatch.setenv("VCAM_TALKER_WEIGHTS", str(tmp_path / "w"))
    assert main(["weights", "download", "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["s256.bin"]


@pytest.mark.parametrize("args", [["weights"], ["weights", "download"], ["weights", "verify"], ["weights", "list"]])
def test_cli_help(args, capsys):
    with pytest.raises(SystemExit) as ei:
        main([*args, "--help"])
    assert ei.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: vcam-talker {' '.join(args)}")
