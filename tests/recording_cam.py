"""A pyvirtualcam backend that records what a meeting app would read from the camera:
each frame (or a crop of it) and the monotonic time it was sent. Registered through
pyvirtualcam's own ``register_backend`` hook, because this kernel has no v4l2loopback.

In-process tests call :func:`register`. A daemon *process* loads this module through
``VCAM_TALKER_PLUGINS=tests.recording_cam``; it then takes the crop from
``$VCAM_RECORD_CROP`` ("y0,y1,x0,x1") and saves what it recorded to ``$VCAM_RECORD_OUT``
(.npz) when the camera closes.

Beside each frame it records what the daemon's VirtualCamSink knew of it (frame index,
the audio sample the picture shows, the window the engine read, repeated), as an int64
row ``meta``: pyvirtualcam passes only pixels, so the sink's send is wrapped to hand them
over (same thread, just before the pixels)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pyvirtualcam

BACKEND = "recording"


class RecordingCamera:
    #: the instances made by pyvirtualcam.Camera, newest last (the test reads them)
    instances: list["RecordingCamera"] = []
    #: (y0, y1, x0, x1) to keep of each frame; None keeps a 1/4-size copy
    crop: tuple[int, int, int, int] | None = None
    #: keep only the send times (long soak runs); $VCAM_RECORD_TIMES_ONLY in plugin mode
    times_only: bool = False

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw):
        self.width, self.height, self.fps = width, height, fps
        self._device = device or "recording-cam"
        self.times: list[float] = []
        self.frames: list[np.ndarray] = []
        self.meta: list[tuple[int, int, int, int, int]] = []
        self._lock = threading.Lock()
        RecordingCamera.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        t = time.monotonic()
        meta = _pending.pop("meta", (-1, -1, -1, -1, -1))
        with self._lock:
            self.meta.append(meta)
        if self.times_only:
            with self._lock:
                self.times.append(t)
            return
        img = frame.reshape(self.height, self.width, 3)
        if self.crop is not None:
            y0, y1, x0, x1 = self.crop
            keep = img[y0:y1, x0:x1].copy()
        else:
            keep = img[::4, ::4].copy()
        with self._lock:
            self.times.append(t)
            self.frames.append(keep)

    def close(self) -> None:
        out = os.environ.get("VCAM_RECORD_OUT")
        if out:
            times, frames = self.snapshot()
            with self._lock:
                meta = np.array(self.meta, np.int64).reshape(-1, 5)
            np.savez(out, times=times, frames=frames, meta=meta)

    def device(self) -> str:
        return self._device

    def native_fourcc(self):
        return None

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return np.array(self.times), np.array(self.frames)


#: the frame the sink is sending right now (set and read on the pacer thread)
_pending: dict = {}


def _wrap_sink_send() -> None:
    from vcam_talker.sinks.virtualcam import VirtualCamSink

    if getattr(VirtualCamSink.send, "records_meta", False):
        return
    send = VirtualCamSink.send

    def send_with_meta(self, frame, audio=None):
        _pending["meta"] = (frame.index, frame.sample, frame.window[0], frame.window[1], int(frame.repeated))
        return send(self, frame, audio)

    send_with_meta.records_meta = True
    VirtualCamSink.send = send_with_meta


def register() -> None:
    RecordingCamera.instances.clear()
    pyvirtualcam.register_backend(BACKEND, RecordingCamera)
    _wrap_sink_send()


if os.environ.get("VCAM_RECORD_OUT"):  # loaded as a daemon plugin
    if os.environ.get("VCAM_RECORD_CROP"):
        RecordingCamera.crop = tuple(int(v) for v in os.environ["VCAM_RECORD_CROP"].split(","))
    RecordingCamera.times_only = bool(os.environ.get("VCAM_RECORD_TIMES_ONLY"))
    pyvirtualcam.register_backend(BACKEND, RecordingCamera)
    _wrap_sink_send()
