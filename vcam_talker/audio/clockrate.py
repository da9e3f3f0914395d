"""How fast a device clock runs against time.monotonic, learnt from timestamps.

A USB microphone's clock is not the virtual sink's: the input may deliver a few hundred
ppm more or fewer samples per second than the output consumes. The delayed playback
corrects the resulting error (splices in pauses, a stretch in speech), but an error
that grows 5 ms a second (0.5 %) inside a long utterance is seen before it is fixed.
Knowing the input's rate, the playback plays at it as its base speed and the error does
not grow at all (``DelayedPlayback``).

A clock is observed as pairs (t, offset): ``t`` a time.monotonic() moment and
``offset = t - reading``, where ``reading`` is the clock's count at that moment in
nominal seconds (ring samples / 16 kHz). Its slope is the drift: 0.005 means the clock
reads 0.5 % slow. Steps of the offset (an overflow that lost
samples, a stall, a reopened stream) are not drift: a bin that leaves the learnt line by
more than :attr:`ClockRate.JUMP_S` starts a new segment, and the last estimate stands
until that segment spans :attr:`ClockRate.MIN_SPAN_S`.
"""

from __future__ import annotations

import numpy as np


class ClockRate:
    """The drift of one clock against time.monotonic (see the module docstring)."""

    #: pairs are averaged over bins of this length (s): callbacks jitter by milliseconds
    BIN_S = 1.0
    #: a segment spanning this long (s) gives an estimate (a step under JUMP_S, a few ms,
    #: bends a longer fit less)
    MIN_SPAN_S = 8.0
    #: the fit uses the newest this many seconds
    KEEP_S = 60.0
    #: a bin this far (s) off the learnt line is a step, not drift (0.5 % moves 5 ms a bin)
    JUMP_S = 0.010
    #: drifts beyond this are not a clock (a test's synthetic times, a broken stamp)
    MAX = 0.01

    def __init__(self):
        self.drift = 0.0  # learnt slope; 0 until a segment spans MIN_SPAN_S
        self.learnt = False
        self.segments = 0  # steps seen (each starts a new segment)
        self._bins: list[tuple[float, float]] = []  # (mean t, mean offset) per closed bin
        self._acc: list[float] | None = None  # [t first, sum t, sum offset, count] of the open bin

    def add(self, t: float, offset: float) -> None:
        """One observation: at monotonic ``t`` the clock's offset was ``offset`` (s)."""
        acc = self._acc
        if acc is None:
            self._acc = [t, t, offset, 1]
            return
        # a step inside the bin closes it early: a bin must not average both sides
        if t - acc[0] < self.BIN_S and abs(offset - acc[2] / acc[3]) <= self.JUMP_S:
            acc[1] += t
            acc[2] += offset
            acc[3] += 1
            return
        self._close((acc[1] / acc[3], acc[2] / acc[3]))
        self._acc = [t, t, offset, 1]

    @property
    def ratio(self) -> float:
        """The clock's rate against time.monotonic (1 - drift): 1.005 runs 0.5 % fast."""
        return 1.0 - self.drift

    def _close(self, b: tuple[float, float]) -> None:
        bins = self._bins
        if bins:
            t1, o1 = bins[-1]
            if abs(b[1] - (o1 + self.drift * (b[0] - t1))) > self.JUMP_S:
                bins.clear()  # a step: learn again from here, keeping the last estimate
                self.segments += 1
        bins.append(b)
        while bins[-1][0] - bins[0][0] > self.KEEP_S:
            bins.pop(0)
        if bins[-1][0] - bins[0][0] >= self.MIN_SPAN_S:
            t, o = np.array(bins).T
            slope = float(np.polyfit(t - t[0], o, 1)[0])
            if abs(slope) <= self.MAX:
                self.drift, self.learnt = slope, True
