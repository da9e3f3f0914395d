"""``cv2``, imported on its first use: the sadtalker GPU check's tree carries no opencv wheel
(50 MB, over its 64 MiB) and times everything but the paste-back there."""

from __future__ import annotations

import importlib


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._name, self._module = name, None

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


cv2 = _LazyModule("cv2")
