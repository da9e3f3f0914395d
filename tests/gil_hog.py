"""A daemon plugin (VCAM_TALKER_PLUGINS=tests.gil_hog) that holds Python's GIL for
$VCAM_GIL_HOLD_MS every $VCAM_GIL_EVERY_MS, in a thread of the daemon's process: what a
renderer thread does when the kernel deschedules it on a saturated CPU while it holds the
GIL (a call through ctypes.PyDLL keeps the GIL for its whole length)."""

from __future__ import annotations

import ctypes
import os
import threading

HOLD_S = float(os.environ.get("VCAM_GIL_HOLD_MS", "150")) / 1e3
EVERY_S = float(os.environ.get("VCAM_GIL_EVERY_MS", "600")) / 1e3
_usleep = ctypes.PyDLL(None).usleep  # PyDLL: the GIL stays held during the call
_usleep.argtypes = [ctypes.c_uint]


def _hog() -> None:
    stop = threading.Event()
    while not stop.wait(EVERY_S - HOLD_S):
        _usleep(int(HOLD_S * 1e6))


threading.Thread(target=_hog, name="test-gil-hog", daemon=True).start()
