"""The live preview (/preview.mjpg) against a real daemon (demo input, the recording camera)
served by a real aiohttp server: it shows exactly the camera's frames, encodes each JPEG
once for every client at most 10 times a second, and a client that leaves costs nothing."""

from __future__ import annotations

import asyncio
import logging
import time

import cv2
import numpy as np
import pytest
from aiohttp import ClientSession, web

from tests.daemon_proc import free_port
from tests.live_harness import live_config
from tests.recording_cam import RecordingCamera, register
from vcam_talker.daemon import Daemon
from vcam_talker.web.preview import BOUNDARY, MAX_FPS, mjpeg_response


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    import os

    os.environ.setdefault("VCAM_TALKER_CACHE", str(tmp_path_factory.mktemp("cache")))
    register()
    RecordingCamera.crop = None  # keeps a 1/4-size copy of every frame
    d = Daemon(live_config(audio={"input": "demo", "output": "none"}, status={"http": ""}))
    d.start()
    assert d.first_frame.wait(10)
    yield d
    d.stop()


async def serve(daemon) -> tuple[web.AppRunner, str]:
    app = web.Application()
    async def preview(request):
        return await mjpeg_response(request, daemon)

    app.router.add_get("/preview.mjpg", preview)
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/preview.mjpg"


async def read_parts(url: str, seconds: float) -> list[tuple[float, bytes]]:
    """(arrival time, JPEG) of every part received within ``seconds``."""
    out, buf = [], b""
    sep = b"--" + BOUNDARY.encode()
    async with ClientSession() as s, s.get(url) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                chunk = await asyncio.wait_for(r.content.readany(), end - time.monotonic())
            except asyncio.TimeoutError:
                break
            buf += chunk
            while True:
                head = buf.find(b"\r\n\r\n", buf.find(sep))
                if buf.find(sep) < 0 or head < 0:
                    break
                length = int(buf[:head].split(b"Content-Length: ")[1].split(b"\r\n")[0])
                if len(buf) < head + 4 + length + 2:
                    break
                out.append((time.monotonic(), buf[head + 4:head + 4 + length]))
                buf = buf[head + 4 + length + 2:]
    return out


def test_preview_is_the_camera_shared_and_rate_limited(daemon, capsys):
    async def main():
        runner, url = await serve(daemon)
        try:
            a, b = await asyncio.gather(read_parts(url, 4.0), read_parts(url, 4.0))
        finally:
            await runner.cleanup()
        return a, b

    cam = RecordingCamera.instances[-1]
    n_cam = len(cam.snapshot()[0])
    a, b = asyncio.run(main())
    src = daemon.preview.sources
    encodes = sum(s.encodes for s in src.values())
    _, frames = cam.snapshot()
    frames = frames[n_cam:].astype(np.int16)
    ta = np.array([t for t, _ in a])
    rate = (len(ta) - 1) / (ta[-1] - ta[0])
    # each JPEG decodes to one of the camera's own frames, up to JPEG error
    errs = []
    for _, jpeg in a[::5]:
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        small = img[::4, ::4].astype(np.int16)
        errs.append(min(float(np.abs(f - small).mean()) for f in frames))
    with capsys.disabled():
        print(f"\npreview: {len(a)} and {len(b)} JPEGs in 4 s to two clients ({rate:.1f} fps), {encodes} encoded; "
              f"{len(a[0][1]) // 1024} KiB each; mean abs error to the nearest camera frame {max(errs):.2f}")
    assert len(a) >= 25 and len(b) >= 25
    assert rate <= MAX_FPS * 1.1
    assert encodes <= max(len(a), len(b)) + 2  # one encoding per picture, not one per client
    assert max(errs) < 3.0, errs
    # the picture moves (the demo speech animates the mouth): consecutive JPEGs differ
    assert len({jpeg for _, jpeg in a}) > len(a) // 2


def test_a_client_that_leaves_costs_nothing(daemon, caplog):
    async def main():
        runner, url = await serve(daemon)
        base = len(asyncio.all_tasks())
        for _ in range(5):  # leave mid-stream, at once and after some frames
            async with ClientSession() as s:
                r = await s.get(url)
                await r.content.read(1000)
                r.close()
        await asyncio.sleep(1.5)  # a handler waits at most IDLE_RESEND_S for its next frame
        left = len(asyncio.all_tasks()) - base
        # a client still streaming does not hold up the server's shutdown
        s = ClientSession()
        r = await s.get(url)
        await r.content.read(1000)
        t = time.monotonic()
        await runner.cleanup()
        took = time.monotonic() - t
        r.close()
        await s.close()
        return left, took

    with caplog.at_level(logging.DEBUG):
        left, took = asyncio.run(main())
    assert left <= 0, f"{left} tasks left running after the clients left"
    assert took < 1.5, f"shutdown waited {took:.1f} s for a streaming client"
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]
