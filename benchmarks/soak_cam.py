"""A daemon plugin for the working-day soak (VCAM_TALKER_PLUGINS=tests.recording_cam,
benchmarks.soak_cam): the recording camera with bounded memory, so that the soak measures
the daemon and not its instrument.

It keeps every send time and repeated flag only until the soak collects them, and the
mouth crops ($VCAM_RECORD_CROP) of the last $VCAM_SOAK_KEEP_S seconds in one ring array
allocated once. The soak asks by writing a path into the file $VCAM_SOAK_DUMP; the next
frame sent writes (times, repeated, crop_times) there as .npz and the ring beside it
(path + ".crops", raw), clears the times and removes the request. While
$VCAM_CAM_GONE_FILE exists, opening the camera fails and sending fails, as with a removed
v4l2loopback device (like tests/fault_plugin.py)."""

from __future__ import annotations

import os
import time
from array import array
from pathlib import Path

import numpy as np
import pyvirtualcam

from tests.recording_cam import BACKEND, RecordingCamera, _pending

_gone = Path(os.environ.get("VCAM_CAM_GONE_FILE", "/nonexistent/vcam-cam-gone"))
_request = Path(os.environ.get("VCAM_SOAK_DUMP", "/nonexistent/vcam-soak-dump"))
_keep_s = float(os.environ.get("VCAM_SOAK_KEEP_S", "40"))
# module level, so that a camera reopened after a loss goes on with the same record
_times: array = array("d")
_repeated: array = array("b")
_ring: dict = {}  # "crops": (n, h, w, 3) uint8, "times": (n,), "next": int


def _save(path: str, clear: bool = True) -> None:
    crops = _ring.get("crops", np.zeros((0, 1, 1, 3), np.uint8))
    crops.tofile(path + ".crops")  # straight from the ring: no copy
    tmp = path + ".part.npz"
    np.savez(tmp, times=np.frombuffer(_times, np.float64), repeated=np.frombuffer(_repeated, np.int8),
             crop_times=_ring.get("times", np.zeros(0)), crop_shape=np.array(crops.shape))
    os.replace(tmp, path)
    if clear:
        del _times[:], _repeated[:]


def load(path: Path) -> dict:
    """What :func:`_save` wrote, crops in time order (unfilled slots dropped); removes the files."""
    data = dict(np.load(path))
    crops = np.fromfile(str(path) + ".crops", np.uint8).reshape(tuple(data.pop("crop_shape")))
    order = np.argsort(data["crop_times"])
    order = order[data["crop_times"][order] > 0]
    data["crop_times"], data["crops"] = data["crop_times"][order], crops[order]
    path.unlink()
    Path(str(path) + ".crops").unlink()
    return data


class SoakCamera(RecordingCamera):
    def __init__(self, **kw):
        if _gone.exists():
            raise RuntimeError("device /dev/video10 does not exist")
        super().__init__(**kw)

    def send(self, frame: np.ndarray) -> None:
        if _gone.exists():
            raise OSError(19, "No such device")
        t = time.monotonic()
        meta = _pending.pop("meta", (-1, -1, -1, -1, -1))
        _times.append(t)
        _repeated.append(int(meta[4]))
        img = frame.reshape(self.height, self.width, 3)
        if self.crop is None:
            crop = img[::4, ::4]
        else:
            y0, y1, x0, x1 = self.crop
            crop = img[y0:y1, x0:x1]
        if "crops" not in _ring or _ring["crops"].shape[1:] != crop.shape:
            n = int(_keep_s * self.fps)
            _ring.update(crops=np.zeros((n, *crop.shape), np.uint8), times=np.zeros(n), next=0)
        i = _ring["next"]
        _ring["crops"][i] = crop
        _ring["times"][i] = t
        _ring["next"] = (i + 1) % len(_ring["times"])
        if _request.exists():
            out = _request.read_text().strip()
            _request.unlink()
            if out:
                _save(out)

    def close(self) -> None:
        out = os.environ.get("VCAM_RECORD_OUT")
        if out:  # what was not collected yet; a later close (after a reopen) rewrites it
            _save(out, clear=False)


pyvirtualcam.register_backend(BACKEND, SoakCamera)
