"""The dataclasses that travel between stages.

Stream time is counted in audio samples at the engine's rate from the start of the
stream: it is exact, and a frame's time is the audio time it shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class WindowSpec:
    """How much audio an engine needs around each frame time.

    sample_rate: the rate the engine wants (Hz).
    before_s: audio needed before the frame time (context).
    after_s: audio needed after the frame time (lookahead; adds latency live).
    """

    sample_rate: int
    before_s: float
    after_s: float

    @property
    def before(self) -> int:
        return int(round(self.before_s * self.sample_rate))

    @property
    def after(self) -> int:
        return int(round(self.after_s * self.sample_rate))

    @property
    def length(self) -> int:
        return self.before + self.after


@dataclass
class AudioWindow:
    """The audio around one video frame.

    index: the frame number in the stream.
    t: the frame's stream time in seconds (the audio instant it shows).
    samples: float32 mono, length spec.length, covering [t - before_s, t + after_s);
        samples before the stream start are zeros.
    """

    index: int
    t: float
    samples: np.ndarray
    sample_rate: int


@dataclass
class VideoFrame:
    """One rendered frame.

    image: HxWx3 uint8 RGB.
    t: the stream time (s) of the audio this frame shows.
    repeated: True when the scheduler re-sent an older image because the engine fell behind.
    """

    index: int
    t: float
    image: np.ndarray
    repeated: bool = False
    meta: dict = field(default_factory=dict)
