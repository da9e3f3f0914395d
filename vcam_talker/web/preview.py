"""The live preview: exactly the frames the camera gets, as MJPEG for an <img>.

The pacer's frame observer only stores a reference to the newest frame
(:class:`PreviewTap`, costing the camera nothing). The HTTP side encodes lazily: at most
MAX_FPS JPEGs a second, each only once a new frame exists, and each shared by every
client (:class:`JpegSource`), in an executor so the event loop never waits on cv2. With
no client connected nothing is encoded at all.
"""

from __future__ import annotations

import asyncio
import time
import weakref

import cv2
import numpy as np

MAX_FPS = 10.0
QUALITY = 70
#: larger frames are downscaled for the preview (the page shows it at about this size)
MAX_SIDE = 512
#: without a new frame for this long (pipeline restarting, stalled), the current picture is
#: sent again, so no wait is unbounded and a disconnected client is noticed
IDLE_RESEND_S = 1.0
BOUNDARY = "vcamframe"


class PreviewTap:
    """The pacer's ``on_frame`` observer: the newest frame handed to the sinks."""

    def __init__(self):
        self.image: np.ndarray | None = None
        self.seq = 0  # counts frames: a new number means a new picture may be there
        self.sources: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop → JpegSource

    def __call__(self, frame, now: float) -> None:
        self.image = frame.image  # the very array the sinks get; never written afterwards
        self.seq += 1

    def source(self) -> JpegSource:
        """The shared encoder for the running event loop (a reloaded server gets its own)."""
        loop = asyncio.get_running_loop()
        src = self.sources.get(loop)
        if src is None:
            src = self.sources[loop] = JpegSource(self)
        return src


def encode_jpeg(image: np.ndarray, quality: int = QUALITY, max_side: int = MAX_SIDE) -> bytes:
    """RGB uint8 → JPEG bytes, downscaled to ``max_side``."""
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


class JpegSource:
    """One JPEG per new frame, at most MAX_FPS, for every client of one event loop."""

    def __init__(self, tap: PreviewTap, max_fps: float = MAX_FPS):
        self.tap = tap
        self.period = 1.0 / max_fps
        self.jpeg = b""
        self.version = 0  # bumped per JPEG made
        self.encodes = 0
        self._seq = -1  # tap.seq of the frame self.jpeg shows
        self._at = -1e9  # when it was made
        self._lock = asyncio.Lock()

    async def next(self, seen: int) -> tuple[bytes, int]:
        """A JPEG newer than version ``seen``: the one another client just got, or a new one.
        Clients queue on the lock, so while one encodes the others wait for its result."""
        async with self._lock:
            if self.version > seen and self.jpeg:
                return self.jpeg, self.version
            await asyncio.sleep(max(0.0, self._at + self.period - time.monotonic()))
            waited = time.monotonic()
            while (self.tap.seq == self._seq or self.tap.image is None) and \
                    time.monotonic() - waited < IDLE_RESEND_S:
                await asyncio.sleep(0.02)
            image, seq = self.tap.image, self.tap.seq
            if image is None:
                return self.jpeg, self.version  # nothing published yet; the caller asks again
            if seq != self._seq or not self.jpeg:
                self.jpeg = await asyncio.get_running_loop().run_in_executor(None, encode_jpeg, image)
                self.encodes += 1
            self._seq, self._at = seq, time.monotonic()
            self.version += 1
            return self.jpeg, self.version


async def mjpeg_response(request, daemon):
    """GET /preview.mjpg (an aiohttp handler's body): multipart/x-mixed-replace of JPEGs
    until the client leaves."""
    from aiohttp import web  # here: the daemon imports this module, aiohttp only the server needs
    resp = web.StreamResponse(headers={
        "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
    await resp.prepare(request)
    src = daemon.preview.source()
    seen = 0
    try:
        # until the daemon stops or the server shuts down (aiohttp marks the connection
        # force-closed, then waits for the handler): a stream must not hold either up
        while not daemon.stopping and not getattr(request.protocol, "_force_close", False):
            jpeg, seen = await src.next(seen)
            if not jpeg:
                continue
            await resp.write(b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                             % (BOUNDARY.encode(), len(jpeg), jpeg))
    except ConnectionError:  # the client left (ClientConnectionResetError): nothing to report
        pass
    return resp
