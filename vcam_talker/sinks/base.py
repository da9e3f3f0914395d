"""The sink interface: the pacer hands every emitted frame, with the audio it covers, to each sink."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from vcam_talker.frames import VideoFrame


class Sink(ABC):
    name = "sink"
    #: sinks that carry audio get the delayed audio for each tick (float32 mono, engine rate)
    wants_audio = False
    #: the health hook: a sink that fails on its own (a writer thread that died, a dropped
    #: connection) calls it with the reason; the supervisor binds it when it adds the sink
    report: Callable[[str], None] = staticmethod(lambda reason: None)
    #: a reopened sink counts as back after this long without a fault (s)
    confirm_s = 2.0

    @abstractmethod
    def open(self) -> None:
        """Acquire the device/process; raises DeviceError with one line when unavailable."""

    @abstractmethod
    def send(self, frame: VideoFrame, audio: np.ndarray | None = None) -> None:
        """Publish one frame (HxWx3 uint8 RGB); called by the pacer at the frame's emit time."""

    def close(self) -> None:
        """Release; must not raise."""

    def stats(self) -> dict:
        """Counters shown in status beside the sink's health."""
        return {}

    @property
    def detail(self) -> str:
        return self.name
