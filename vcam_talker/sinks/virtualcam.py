"""The virtual camera: pyvirtualcam on v4l2loopback (Linux) or OBS (Windows/macOS)."""

from __future__ import annotations

import sys

import numpy as np

from vcam_talker.config import VirtualCamConfig
from vcam_talker.errors import DeviceError
from vcam_talker.frames import VideoFrame
from vcam_talker.sinks.base import Sink

MODPROBE_HINT = ('sudo modprobe v4l2loopback video_nr=10 card_label="VCam Talker" exclusive_caps=1 '
                 "(or install systemd/v4l2loopback.conf, see README)")


class VirtualCamSink(Sink):
    """Frames go out as soon as the pacer hands them over: pacing is the pacer's job,
    so pyvirtualcam's own sleep_until_next_frame is not used."""

    name = "virtualcam"

    def __init__(self, cfg: VirtualCamConfig, size: tuple[int, int], fps: int):
        self.cfg = cfg
        self.size = size
        self.fps = fps
        self.cam = None
        self._convert = None  # set by open(), for the pixel format

    def open(self) -> None:
        import pyvirtualcam

        try:
            fmt = pyvirtualcam.PixelFormat[self.cfg.fmt]
        except KeyError:
            raise DeviceError(f"sinks.virtualcam.fmt: unknown pixel format {self.cfg.fmt!r}") from None
        w, h = self.size
        try:
            self.cam = pyvirtualcam.Camera(w, h, self.fps, fmt=fmt, device=self.cfg.device or None,
                                           backend=self.cfg.backend or None)
        except Exception as exc:  # pyvirtualcam raises RuntimeError/ValueError with long texts
            reason = " ".join(str(exc).split())
            hint = f"; load it with: {MODPROBE_HINT}" if sys.platform.startswith("linux") else \
                "; install OBS and start its virtual camera once"
            raise DeviceError(f"virtual camera unavailable ({reason}){hint}") from None
        self._convert = _converter(self.cfg.fmt)

    def send(self, frame: VideoFrame, audio: np.ndarray | None = None) -> None:
        self.cam.send(self._convert(frame.image))

    def close(self) -> None:
        if self.cam is not None:
            try:
                self.cam.close()
            except Exception:
                pass
            self.cam = None

    @property
    def detail(self) -> str:
        return f"virtualcam {self.cam.device if self.cam else '-'} ({self.cfg.fmt})"


def _converter(fmt: str):
    import cv2

    if fmt == "RGB":
        return lambda im: im
    if fmt == "BGR":
        return lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2BGR)
    if fmt == "GRAY":
        return lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)
    if fmt == "I420":
        return lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2YUV_I420)
    if fmt == "NV12":
        def nv12(im):
            i420 = cv2.cvtColor(im, cv2.COLOR_RGB2YUV_I420)
            h, w = im.shape[:2]
            y, u, v = i420[:h], i420[h:h + h // 4].reshape(-1), i420[h + h // 4:].reshape(-1)
            uv = np.empty(u.size * 2, np.uint8)
            uv[0::2], uv[1::2] = u, v
            return np.concatenate([y.reshape(-1), uv]).reshape(h * 3 // 2, w)
        return nv12
    if fmt in ("YUYV", "UYVY"):
        code = cv2.COLOR_RGB2YUV_YUYV if fmt == "YUYV" else cv2.COLOR_RGB2YUV_UYVY
        return lambda im: cv2.cvtColor(im, code)
    raise DeviceError(f"sinks.virtualcam.fmt: unsupported {fmt!r}")

