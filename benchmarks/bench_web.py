"""What watching the preview costs the camera: its frame rate with 0 and with 20
concurrent /preview.mjpg clients, side by side in one run, plus one client that keeps
disconnecting mid-stream.

    .venv/bin/python benchmarks/bench_web.py [--seconds 8] [--rounds 2] [--clients 20] [--json PATH]

One daemon in this process (demo input, classic engine, the recording camera, the
control server on a free loopback port). The clients run in a child process, as browsers
would: each reads the stream and counts its JPEGs; the disconnecting client reads one
part, then resets the connection, over and over. Phases alternate (0, N, 0, N, ...) so a
drift of the machine's load hits both sides alike. Goal: fps with N clients within 2 %
of fps without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import report  # noqa: E402

FPS = 25


# ---- the client process ------------------------------------------------------------------
async def _stream(port: int, until: float, counts: list, i: int) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /preview.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    while time.monotonic() < until:
        try:
            chunk = await asyncio.wait_for(r.read(1 << 16), max(0.01, until - time.monotonic()))
        except asyncio.TimeoutError:
            break
        if not chunk:
            break
        counts[i] += chunk.count(b"Content-Type: image/jpeg")
    w.close()


async def _leaver(port: int, until: float, stats: dict) -> None:
    while time.monotonic() < until:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"GET /preview.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        got = b""
        while b"image/jpeg" not in got:
            chunk = await r.read(1 << 16)
            if not chunk:
                break
            got += chunk
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        w.transport.abort()
        stats["left"] += 1
        await asyncio.sleep(0.25)


async def _clients(port: int, n: int, seconds: float) -> dict:
    until = time.monotonic() + seconds
    counts = [0] * n
    stats = {"left": 0}
    await asyncio.gather(*(_stream(port, until, counts, i) for i in range(n)), _leaver(port, until, stats))
    return {"jpegs": counts, "left": stats["left"], "seconds": seconds}


# ---- the daemon side ---------------------------------------------------------------------
def phase(daemon, cam, clients: int, seconds: float, port: int) -> dict:
    child = None
    if clients:
        child = subprocess.Popen([sys.executable, __file__, "--client", str(port), str(clients), str(seconds)],
                                 stdout=subprocess.PIPE, text=True)
    t0, c0 = time.monotonic(), time.process_time()
    rep0 = daemon.stats.frames_repeated
    time.sleep(seconds)
    t1, c1 = time.monotonic(), time.process_time()
    out = {"clients": clients}
    if child is not None:
        out.update(json.loads(child.communicate(timeout=30)[0]))
    with cam._lock:
        times = np.array(cam.times)
    times = times[(times >= t0 + 0.5) & (times <= t1)]  # the clients connect in the first 0.5 s
    gaps = np.diff(times)
    out.update(fps=(len(times) - 1) / (times[-1] - times[0]), gap_p99_ms=float(np.percentile(gaps, 99) * 1e3),
               gap_max_ms=float(gaps.max() * 1e3), repeated=daemon.stats.frames_repeated - rep0,
               cpu_percent=100 * (c1 - c0) / (t1 - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        port, n, seconds = int(args.client[0]), int(args.client[1]), float(args.client[2])
        print(json.dumps(asyncio.run(_clients(port, n, seconds))))
        return
    import importlib.util

    if importlib.util.find_spec("vcam_talker.web.preview") is None:
        sys.exit("vcam_talker/web/preview.py is not there yet: nothing to measure")

    from tests.daemon_proc import free_port
    from tests.live_harness import live_config
    from tests.recording_cam import RecordingCamera, register
    from vcam_talker.daemon import Daemon

    os.environ.setdefault("VCAM_TALKER_CACHE", tempfile.mkdtemp(prefix="bench-web-cache-"))
    os.environ.setdefault("XDG_STATE_HOME", tempfile.mkdtemp(prefix="bench-web-state-"))
    register()
    RecordingCamera.times_only = True
    port = free_port()
    daemon = Daemon(live_config(audio={"input": "demo", "output": "none"}, status={"http": f"127.0.0.1:{port}"}))
    daemon.start()
    try:
        assert daemon.first_frame.wait(15), "no frame published"
        cam = RecordingCamera.instances[-1]
        time.sleep(2.0)  # past the start-up
        phases = []
        for _ in range(args.rounds):
            for n in (0, args.clients):
                phases.append(phase(daemon, cam, n, args.seconds, port))
                p = phases[-1]
                print(f"  {n:>2} clients: {p['fps']:.3f} fps, gap p99 {p['gap_p99_ms']:.0f} ms max "
                      f"{p['gap_max_ms']:.0f} ms, repeated {p['repeated']}, daemon CPU {p['cpu_percent']:.0f} %",
                      flush=True)
        time.sleep(1.0)  # the server notices the last hang-ups
        encodes = sum(s.encodes for s in daemon.preview.sources.values())
        conns = len(daemon._http._runner.server.connections)
    finally:
        daemon.stop()
    base = [p for p in phases if p["clients"] == 0]
    load = [p for p in phases if p["clients"]]

    def mean(ps, k):
        return float(np.mean([p[k] for p in ps]))

    fps0, fps_n = mean(base, "fps"), mean(load, "fps")
    per_client = [j / p["seconds"] for p in load for j in p["jpegs"]]
    drop = 100 * (fps0 - fps_n) / fps0
    rows = [("camera fps, 0 clients", fps0, "fps"), (f"camera fps, {args.clients} clients", fps_n, "fps"),
            ("fps drop", drop, "%"),
            ("frame gap p99, 0 clients", mean(base, "gap_p99_ms"), "ms"),
            (f"frame gap p99, {args.clients} clients", mean(load, "gap_p99_ms"), "ms"),
            ("frame gap max, 0 clients", max(p["gap_max_ms"] for p in base), "ms"),
            (f"frame gap max, {args.clients} clients", max(p["gap_max_ms"] for p in load), "ms"),
            ("repeated frames per phase, 0 clients", mean(base, "repeated"), "frames"),
            (f"repeated frames per phase, {args.clients} clients", mean(load, "repeated"), "frames"),
            ("daemon CPU, 0 clients", mean(base, "cpu_percent"), "% of a core"),
            (f"daemon CPU, {args.clients} clients", mean(load, "cpu_percent"), "% of a core"),
            ("preview JPEGs per client per s, min", min(per_client), "1/s"),
            ("preview JPEGs per client per s, mean", float(np.mean(per_client)), "1/s"),
            ("mid-stream disconnects", float(sum(p["left"] for p in load)), "count"),
            ("connections left after the run", float(conns), "count"),
            ("JPEG encodes in all", float(encodes), "count")]
    report("bench_web", rows, extra={"phases": phases, "goal_drop_percent": 2.0, "passed": drop <= 2.0},
           out=args.json)


if __name__ == "__main__":
    main()
