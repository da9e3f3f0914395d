"""The sink interface: the pacer hands every emitted frame, with the audio it covers, to each sink."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from vcam_talker.frames import VideoFrame


class Sink(ABC):
    name = "sink"
    #: sinks that carry audio get the delayed audio for each tick (float32 mono, engine rate)
    wants_audio = False

    @abstractmethod
    def open(self) -> None:
        """Acquire the device/process; raises DeviceError with one line when unavailable."""

    @abstractmethod
    def send(self, frame: VideoFrame, audio: np.ndarray | None = None) -> None:
        """Publish one frame (HxWx3 uint8 RGB); called by the pacer at the frame's emit time."""

    def close(self) -> None:
        """Release; must not raise."""

    @property
    def detail(self) -> str:
        return self.name
