"""The control server against a real daemon (demo input, classic engine, the recording
camera, a config file in tmp_path) over real sockets, with raw headers: Host, Origin and
token checks, the avatar API end to end (upload, select, the daemon reloads to it),
/metrics, the connection bounds, a network bind."""

from __future__ import annotations

import hashlib
import importlib.util
import http.client
import json
import logging
import os
import re
import socket
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_proc import base_config, free_port
from tests.recording_cam import register
from tests.test_web_security import claim_size, png_bytes
from vcam_talker import config as config_mod
from vcam_talker.daemon import Daemon
from vcam_talker.errors import VcamError
from vcam_talker.web import server as server_mod
from vcam_talker.web.server import ControlServer

ROOT = Path(__file__).resolve().parents[1]
FACE = ROOT / "avatars" / "default.png"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    saved = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "VCAM_TALKER_CACHE")}
    os.environ.update(XDG_STATE_HOME=str(tmp / "state"), VCAM_TALKER_CACHE=str(tmp / "cache"))
    register()
    cfg = base_config(free_port(), control={"avatars_dir": "share/avatars"})
    (tmp / "share" / "avatars").mkdir(parents=True)
    path = tmp / "config.yaml"
    path.write_text("# my settings\n" + yaml.safe_dump(cfg))
    d = Daemon(config_mod.load(path), config_path=path)
    d.start()
    assert d.first_frame.wait(10) and d._http is not None
    token = (tmp / "state" / "vcam-talker" / "token").read_text().strip()
    yield tmp, d, token
    d.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def request(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
            host: str = "127.0.0.1") -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request with exactly these headers (Host defaults to 127.0.0.1:PORT; a None value
    leaves the header out)."""
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    h = {"Host": f"127.0.0.1:{port}"}
    h.update(headers or {})
    if body is not None:
        h["Content-Length"] = str(len(body))
    for k, v in h.items():
        if v is not None:
            c.putheader(k, v)
    c.endheaders(body)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.headers, data


def post(port, path, token, body=b"{}", ctype="application/json", **extra):
    h = {"Origin": f"http://127.0.0.1:{port}", "X-VCam-Token": token, "Content-Type": ctype}
    h.update(extra)
    return request(port, "POST", path, h, body)


def multipart(filename: str, data: bytes, field: str = "photo") -> tuple[bytes, str]:
    b = "vcamtestboundary"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def tree(root: Path) -> dict:
    """Every file under ``root`` with its sha256: what must not change."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "cache" not in p.parts}


def wait_until(pred, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def error_of(data: bytes) -> str:
    body = json.loads(data)
    assert set(body) == {"error"} and "\n" not in body["error"]
    return body["error"]


def test_host_header_is_checked(env, caplog):
    _, d, _ = env
    port = d._http.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        status, h, data = request(port, "GET", "/status", {"Host": host})
        assert status == 200 and h["Content-Type"].startswith("application/json")
        assert json.loads(data)["frames_published"] > 0
    for host in (f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1", ""):
        status, h, data = request(port, "GET", "/status", {"Host": host})
        assert status == 403, host
        assert "Host" in error_of(data) and h["X-Content-Type-Options"] == "nosniff"
    with caplog.at_level(logging.DEBUG):
        assert request(port, "GET", "/status", {"Host": None})[0] == 400  # aiohttp: HTTP/1.1 needs one
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    status, _, data = request(port, "GET", "/nope")
    assert status == 404 and error_of(data)


def test_posts_need_origin_and_token(env):
    _, d, token = env
    port = d._http.port
    own = f"http://127.0.0.1:{port}"
    cases = [({}, 403), ({"Origin": "http://evil.example"}, 403), ({"Origin": "null"}, 403),
             ({"Origin": own.replace("127.0.0.1", "localhost")}, 403),
             ({"Origin": own}, 401), ({"Origin": own, "X-VCam-Token": token[:-1]}, 401),
             ({"Origin": own, "X-VCam-Token": ""}, 401),
             ({"Origin": "http://evil.example", "X-VCam-Token": token}, 403),
             ({"Origin": own, "X-VCam-Token": token, "Host": f"evil.example:{port}"}, 403)]
    before = d.reloads
    for headers, want in cases:
        status, _, data = request(port, "POST", "/reload", headers, b"")
        assert status == want, headers
        error_of(data)
    status, _, _ = request(port, "OPTIONS", "/reload", {"Origin": "http://evil.example",
                                                        "Access-Control-Request-Method": "POST"})
    assert status == 403  # no CORS preflight passes
    time.sleep(0.5)
    assert d.reloads == before  # nothing refused reached the daemon
    status, _, data = post(port, "/reload", token, b"")
    assert status == 202 and json.loads(data) == {"reload": "requested"}
    assert wait_until(lambda: d.reloads > before)


def test_index_page_gets_the_token(env, tmp_path):
    _, d, _ = env
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text('<meta name="vcam-token" content="{{TOKEN}}"><p>{{TOKEN}}</p>')
    (static / "app.js").write_text("console.log(1)")
    srv = ControlServer("127.0.0.1:0", d, token="T" * 20, static_dir=static)
    srv.start()
    try:
        port = srv.port
        status, h, data = request(port, "GET", "/")
        assert status == 200 and data == b'<meta name="vcam-token" content="' + b"T" * 20 + b'"><p>' + b"T" * 20 + b"</p>"
        assert h["Cache-Control"] == "no-store" and "frame-ancestors 'none'" in h["Content-Security-Policy"]
        assert h["X-Frame-Options"] == "DENY" and "Set-Cookie" not in h
        status, _, data = request(port, "GET", "/static/app.js")
        assert status == 200 and data == b"console.log(1)"
        status, _, _ = request(port, "GET", "/static/../index.html")
        assert status in (403, 404)
        status, _, _ = request(port, "GET", "/", {"Host": f"evil.example:{port}"})
        assert status == 403  # a rebinding page cannot read the token
    finally:
        srv.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_metrics(env):
    _, d, _ = env
    port = d._http.port

    def scrape() -> dict:
        status, h, data = request(port, "GET", "/metrics")
        assert status == 200 and h["Content-Type"].startswith("text/plain")
        out = {}
        for fam in text_string_to_metric_families(data.decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    a = scrape()
    time.sleep(0.5)
    b = scrape()
    key = ("vcam_talker_frames_published_total", ())
    assert b[key] > a[key] > 0
    assert b[("vcam_talker_up", (("part", "virtualcam"),))] == 1.0
    assert b[("vcam_talker_up", (("part", "input"),))] == 1.0
    assert 20 <= b[("vcam_talker_fps", ())] <= 30
    for h in ("vcam_talker_engine_latency_seconds", "vcam_talker_frame_ready_seconds"):
        n_a, n_b = a[(h + "_count", ())], b[(h + "_count", ())]
        inf = b[(h + "_bucket", (("le", "+Inf"),))]
        assert inf == n_b and n_b > n_a > 0  # cumulative: every observation once
        assert b[(h + "_sum", ())] > 0
    # the second scrape added exactly the frames rendered between the two
    rendered = b[("vcam_talker_frames_rendered_total", ())] - a[("vcam_talker_frames_rendered_total", ())]
    added = b[("vcam_talker_engine_latency_seconds_count", ())] - a[("vcam_talker_engine_latency_seconds_count", ())]
    assert abs(added - rendered) <= 1
    for name in ("vcam_talker_frames_repeated_total", "vcam_talker_windows_skipped_total",
                 "vcam_talker_engine_errors_total", "vcam_talker_reloads_total"):
        assert (name, ()) in b


def test_avatar_api_end_to_end(env):
    tmp, d, token = env
    port = d._http.port
    folder = tmp / "share" / "avatars"
    status, _, data = request(port, "GET", "/api/avatars")
    listing = json.loads(data)
    assert status == 200 and listing["folder"] == str(folder) and listing["avatars"] == []
    assert listing["current"] == str(FACE)
    guarded = tree(tmp)
    config_before = (tmp / "config.yaml").read_bytes()

    refused = [("notes.txt", b"just text\n", 400), ("big.png", b"\x89PNG" + b"\0" * (10 << 20), 413),
               ("bomb.png", claim_size(png_bytes(8, 8), 30000, 30000), 413)]
    for name, payload, want in refused:
        body, ctype = multipart(name, payload)
        status, _, data = post(port, "/api/avatars", token, body, ctype)
        assert status == want, name
        error_of(data)
    body, ctype = multipart("face.png", FACE.read_bytes(), field="other")
    assert post(port, "/api/avatars", token, body, ctype)[0] == 400
    assert post(port, "/api/avatars", token, b'{"photo": 1}')[0] == 400
    body, ctype = multipart("face.png", FACE.read_bytes())
    assert post(port, "/api/avatars", "", body, ctype)[0] == 401
    for name in ("../../evil.png", "/etc/passwd", "..", "sub/x.png", "missing.png", "config.yaml"):
        status, _, data = post(port, "/api/avatar", token, json.dumps({"name": name}).encode())
        assert status in (400, 404), name
        error_of(data)
    assert post(port, "/api/avatar", token, b"not json")[0] == 400
    assert tree(tmp) == guarded  # nothing anywhere changed

    body, ctype = multipart("../../evil.png", FACE.read_bytes())  # the client's name is ignored
    status, _, data = post(port, "/api/avatars", token, body, ctype)
    assert status == 201
    name = json.loads(data)["name"]
    assert re.fullmatch(r"upload-[0-9a-f]{16}\.png", name)
    now = tree(tmp)
    assert set(now) - set(guarded) == {f"share/avatars/{name}"} and all(now[k] == v for k, v in guarded.items())
    assert json.loads(request(port, "GET", "/api/avatars")[2])["avatars"] == [name]

    inode = (tmp / "config.yaml").stat().st_ino
    before = d.reloads
    status, _, data = post(port, "/api/avatar", token, json.dumps({"name": name}).encode())
    assert status == 200 and json.loads(data) == {"avatar": name}
    text = (tmp / "config.yaml").read_text()
    assert text.startswith("# my settings\n")  # edited in place, not dumped anew
    assert yaml.safe_load(text)["avatar"]["image"] == str(folder / name)
    assert (tmp / "config.yaml").stat().st_ino != inode  # replaced by a rename, never half-written
    assert config_before != text.encode()
    assert sorted(p.name for p in tmp.iterdir()) == ["cache", "config.yaml", "share", "state"]
    assert wait_until(lambda: d.status()["avatar"] == str(folder / name)), d.status()["last_error"]
    assert d.reloads > before and d.status()["reload_errors"] == 0
    assert json.loads(request(port, "GET", "/api/avatars")[2])["current"] == name


def test_avatar_posts_without_a_config_file(env):
    _, d, token = env
    port = d._http.port
    saved, d.config_path = d.config_path, None
    try:
        status, _, data = post(port, "/api/avatar", token, b'{"name": "x.png"}')
        assert status == 409 and "config" in error_of(data)
        body, ctype = multipart("face.png", FACE.read_bytes())
        assert post(port, "/api/avatars", token, body, ctype)[0] == 409
    finally:
        d.config_path = saved


def test_mute(env):
    _, d, token = env
    port = d._http.port
    try:
        status, _, data = post(port, "/api/mute", token, b'{"muted": true}')
        assert status == 200 and json.loads(data) == {"muted": True} and d.status()["muted"] is True
        assert post(port, "/api/mute", token, b'{"muted": "yes"}')[0] == 400
    finally:
        assert post(port, "/api/mute", token, b'{"muted": false}')[0] == 200
    assert d.status()["muted"] is False


def test_non_loopback_bind_needs_a_token(env, caplog):
    _, d, _ = env
    with pytest.raises(VcamError, match=r"^status\.http 0\.0\.0\.0:0 is not a loopback address, so "
                                        r"control\.token must be set[^\n]*$"):
        ControlServer("0.0.0.0:0", d, token="")
    # a Config built in code, past the validator: the daemon refuses the server in one line
    import dataclasses

    saved = d.cfg
    d.cfg = dataclasses.replace(saved, status=dataclasses.replace(saved.status, http="0.0.0.0:0"))
    old_http, d._http = d._http, None
    try:
        with caplog.at_level(logging.ERROR, logger="vcam_talker"):
            d._start_status_server()
        assert d._http is None
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(lines) == 1 and "control.token must be set" in lines[0] and "\n" not in lines[0]
    finally:
        d.cfg, d._http = saved, old_http


def local_ip() -> str | None:
    """A non-loopback address of this machine, if it has one (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


@pytest.mark.parametrize("bind", ["0.0.0.0", "own-ip"])
def test_network_bind_needs_the_token_everywhere(env, tmp_path, bind):
    _, d, _ = env
    if bind == "own-ip":
        bind = local_ip()
        if bind is None:
            pytest.skip("this machine has no non-loopback IPv4 address to bind")
    token = "N" * 24
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("{{TOKEN}}")
    (static / "app.js").write_text("js")
    srv = ControlServer(f"{bind}:0", d, token=token, static_dir=static)
    srv.start()
    try:
        port = srv.port
        hostport = f"{'127.0.0.1' if bind == '0.0.0.0' else bind}:{port}"

        def get(path, headers=None):
            return request(port, "GET", path, {"Host": hostport, **(headers or {})},
                           host=hostport.rsplit(":", 1)[0])

        for path in ("/status", "/metrics", "/", "/static/app.js", "/api/avatars"):
            status, _, data = get(path)
            assert status == 401, path
            error_of(data)
            assert get(path, {"X-VCam-Token": "N" * 23})[0] == 401
            assert get(path, {"X-VCam-Token": token})[0] == 200, path
        assert get(f"/status?token={token}")[0] == 200
        status, h, data = get(f"/?token={token}")
        assert status == 200 and data == token.encode()
        cookie = h["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in h["Set-Cookie"] and "SameSite=Strict" in h["Set-Cookie"]
        assert get("/static/app.js", {"Cookie": cookie})[0] == 200  # the page's own files load
        if bind != "0.0.0.0":
            assert get("/status", {"Host": f"localhost:{port}", "X-VCam-Token": token})[0] == 403
        own = {"Host": hostport, "Origin": f"http://{hostport}"}
        host = hostport.rsplit(":", 1)[0]
        assert request(port, "POST", "/reload", {**own, "Cookie": cookie}, b"", host=host)[0] == 401
        assert request(port, "POST", f"/reload?token={token}", own, b"", host=host)[0] == 401
        assert request(port, "POST", "/reload", {**own, "X-VCam-Token": token}, b"", host=host)[0] == 202
        # `vcam-talker status` sends the configured token
        from vcam_talker import cli

        conf = tmp_path / "c.yaml"
        conf.write_text(yaml.safe_dump({"status": {"http": f"{bind}:{port}"}, "control": {"token": token}}))
        args = type("A", (), {"config": str(conf), "address": None, "json": True})()
        assert cli.cmd_status(args) == 0
        conf.write_text(yaml.safe_dump({"status": {"http": f"{bind}:{port}"}, "control": {"token": "x" * 16}}))
        with pytest.raises(VcamError, match="refused: 401 .*token"):
            cli.cmd_status(args)
    finally:
        srv.stop()


def test_connection_cap_and_head_timeout(env, monkeypatch, caplog):
    _, d, _ = env
    monkeypatch.setattr(server_mod, "HEAD_TIMEOUT_S", 3.0)
    srv = ControlServer("127.0.0.1:0", d, token="C" * 20)
    srv.start()
    socks = []
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(server_mod.MAX_CONNECTIONS + 30):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0")  # half a request, then silence
                socks.append(s)
            t_full = time.monotonic()
            assert wait_until(lambda: srv.refused >= 30, 2), srv.refused
            assert socks[0].recv(100) == b""  # closed by the server once the head timed out
            assert time.monotonic() - t_full < 4.0
            assert wait_until(lambda: len(srv._runner.server.connections) == 0, 5)
            assert request(srv.port, "GET", "/status")[0] == 200  # and it serves again
        assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        for s in socks:
            s.close()
        srv.stop()


def test_client_leaving_mid_stream_costs_nothing(env, caplog):
    _, d, _ = env
    pytest.importorskip("vcam_talker.web.preview", reason="the preview (part 2) is not there yet")
    port = d._http.port
    conns = d._http._runner.server
    with caplog.at_level(logging.DEBUG):
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(f"GET /preview.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            got = b""
            while b"image/jpeg" not in got:
                got += s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST on close
            s.close()
        assert wait_until(lambda: len(conns.connections) == 0, 5)
        assert request(port, "GET", "/status")[0] == 200
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(("aiohttp", "asyncio"))]


def test_stop_closes_the_port(env):
    _, d, _ = env
    srv = ControlServer("127.0.0.1:0", d, token="S" * 20)
    srv.start()
    port = srv.port
    assert request(port, "GET", "/status")[0] == 200
    held = [socket.create_connection(("127.0.0.1", port))]  # idle and streaming clients: no hold-up
    if importlib.util.find_spec("vcam_talker.web.preview") is not None:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(f"GET /preview.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert b"multipart/x-mixed-replace" in s.recv(4096)
        held.append(s)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 1.5 and not srv._thread.is_alive()
    for s in held:
        s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_bodies_in_pieces_and_stalled_bodies(env, monkeypatch):
    _, d, token = env
    port = d._http.port
    monkeypatch.setattr(server_mod, "BODY_TIMEOUT_S", 1.0)
    head = (f"POST /api/mute HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
            f"X-VCam-Token: {token}\r\nContent-Type: application/json\r\n").encode()

    def send(pieces: list[bytes], length: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head + f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode())
            for p in pieces:
                s.sendall(p)
                time.sleep(0.3)
            got = b""
            while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < int(
                    re.search(rb"Content-Length: (\d+)", got).group(1)):
                chunk = s.recv(4096)
                assert chunk, got
                got += chunk
            return got

    body = b'{"muted": false}'
    got = send([body[:5], body[5:]], len(body))  # two segments, 0.3 s apart: one body
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b'{"muted": false}')
    t0 = time.monotonic()
    got = send([body[:5]], len(body))  # the rest never comes
    assert got.startswith(b"HTTP/1.1 408") and b"took more than 1 s" in got
    assert time.monotonic() - t0 < 2.5
