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
    end: the stream's length in samples once the window reaches it (a file's end), else
        None; a live stream never ends.
    """

    index: int
    t: float
    samples: np.ndarray
    sample_rate: int
    end: int | None = None


@dataclass
class VideoFrame:
    """One rendered frame.

    image: HxWx3 uint8 RGB.
    t: the stream time (s) of the audio this frame shows.
    repeated: True when the scheduler re-sent an older image because the engine fell behind.
    sample: the audio sample index (in the capture ring) of the instant this image shows,
        the centre of the window it was rendered from; -1 for the idle picture.
    window: the samples [start, end) the engine read for it; (-1, -1) for the idle picture.
        Carried so sync can be checked from outside against the mic: frame ``sample``
        should leave when the mic plays that sample.
    """

    index: int
    t: float
    image: np.ndarray
    repeated: bool = False
    sample: int = -1
    window: tuple[int, int] = (-1, -1)
    meta: dict = field(default_factory=dict)


class AudioSpan(np.ndarray):
    """The audio the pacer hands to audio sinks at a tick: float32 samples that also carry
    ``start``, the ring index of the first one (negative before the stream's start), so a
    recorder places them by index rather than by counting ticks. None: unknown."""

    start: int | None = None

    @staticmethod
    def of(samples: np.ndarray, start: int) -> "AudioSpan":
        out = np.asarray(samples, np.float32).view(AudioSpan)
        out.start = int(start)
        return out
