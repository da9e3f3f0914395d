"""A daemon plugin (VCAM_TALKER_PLUGINS=tests.fault_plugin) that makes the classic engine
raise on every frame while the file named by $VCAM_FAULT_FILE exists: a way to inject
engine failures into a real daemon process from outside."""

from __future__ import annotations

import os
from pathlib import Path

from vcam_talker.engines.classic.engine import ClassicEngine

_trigger = Path(os.environ["VCAM_FAULT_FILE"]) if os.environ.get("VCAM_FAULT_FILE") else None
_render = ClassicEngine.render


def _faulty_render(self, window, avatar):
    if _trigger is not None and _trigger.exists():
        raise RuntimeError("injected fault")
    return _render(self, window, avatar)


ClassicEngine.render = _faulty_render


# The camera: while $VCAM_CAM_GONE_FILE exists, opening the recording camera fails and a
# camera already open fails on send, the way a removed v4l2loopback device does.
_cam_gone = Path(os.environ["VCAM_CAM_GONE_FILE"]) if os.environ.get("VCAM_CAM_GONE_FILE") else None
if _cam_gone is not None:
    import pyvirtualcam

    from tests.recording_cam import BACKEND, RecordingCamera

    class VanishingCamera(RecordingCamera):
        def __init__(self, **kw):
            if _cam_gone.exists():
                raise RuntimeError("device /dev/video10 does not exist")
            super().__init__(**kw)

        def send(self, frame):
            if _cam_gone.exists():
                raise OSError(19, "No such device")
            super().send(frame)

    pyvirtualcam.register_backend(BACKEND, VanishingCamera)
