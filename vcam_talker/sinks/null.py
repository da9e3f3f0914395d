"""A sink that only counts: for tests and benchmarks."""

from __future__ import annotations

import numpy as np

from vcam_talker.frames import VideoFrame
from vcam_talker.sinks.base import Sink


class NullSink(Sink):
    name = "null"

    def __init__(self) -> None:
        self.frames = 0

    def open(self) -> None:
        pass

    def send(self, frame: VideoFrame, audio: np.ndarray | None = None) -> None:
        self.frames += 1
