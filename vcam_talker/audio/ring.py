"""A bounded, thread-safe mono audio ring with a sample-index clock.

The capture thread writes blocks; the video scheduler and the delayed playback read
them by absolute sample index (stream time = index / sample_rate, see frames.py). Each
write also records an *anchor*: the time.monotonic() at which its first sample was
captured, so any index can be mapped to its capture time with :meth:`AudioRing.time_of`.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from vcam_talker.errors import AudioError


class RingRangeError(AudioError, IndexError):
    """A read asked for samples the ring does not hold (overwritten or not yet written)."""


class RingOverwrittenError(RingRangeError):
    """The requested samples were already overwritten: the reader fell too far behind."""


class RingNotWrittenError(RingRangeError):
    """The requested samples were not written yet: the reader is ahead of the writer."""


class AudioRing:
    """Bounded mono float32 ring at ``sample_rate`` addressed by absolute sample index.

    Indices count every sample ever written, from 0; the ring keeps the newest
    ``capacity_s`` seconds. Reads of negative indices give zeros (silence before the
    stream start). All methods are thread-safe.

    Args:
        sample_rate: the engine rate in Hz (default 16 kHz).
        capacity_s: seconds of audio kept; older samples are overwritten.
        smooth_s: half-width (s) of the anchor window that :meth:`time_of` smooths over.
    """

    def __init__(self, sample_rate: int = 16000, capacity_s: float = 30.0, smooth_s: float = 0.5):
        if sample_rate <= 0 or capacity_s <= 0:
            raise ValueError(f"AudioRing needs a positive rate and capacity, got {sample_rate} Hz, {capacity_s} s")
        self.sample_rate = int(sample_rate)
        self.length = None  # a live stream never ends (see stream.windows.AudioSource)
        self.capacity = max(1, int(round(capacity_s * self.sample_rate)))
        self.smooth_s = float(smooth_s)
        self._buf = np.zeros(self.capacity, np.float32)
        self._end = 0
        self._cond = threading.Condition(threading.Lock())
        # Anchors (first index of a write, its capture time) in two linear arrays: when
        # full, the older half is dropped. 8192 covers the capacity at 10 ms blocks up to
        # 80 s; older indices are extrapolated from the oldest anchors kept.
        self._amax = 8192
        self._aidx = np.zeros(self._amax, np.int64)
        self._at = np.zeros(self._amax, np.float64)
        self._na = 0
        #: per write: seconds from the capture of its last sample to it being readable here
        #: (the capture part of the latency; the writer's clock, bounded)
        self.arrival_lag: deque[float] = deque(maxlen=200)

    # -- writing -------------------------------------------------------------------

    def write(self, samples: np.ndarray, t_first: float | None = None) -> int:
        """Append ``samples`` (mono float32) captured from time.monotonic() ``t_first`` on.

        ``t_first`` is the capture (ADC) time of the first sample on the monotonic
        clock; None means "now minus the block's duration" (the block just arrived).
        Returns the index of the first sample written.
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = len(x)
        if t_first is None:
            t_first = time.monotonic() - n / self.sample_rate
        with self._cond:
            first = self._end
            if n == 0:
                return first
            if n >= self.capacity:  # only the newest capacity samples survive anyway
                x_keep, start = x[-self.capacity:], first + n - self.capacity
            else:
                x_keep, start = x, first
            pos = start % self.capacity
            k = min(len(x_keep), self.capacity - pos)
            self._buf[pos:pos + k] = x_keep[:k]
            if k < len(x_keep):
                self._buf[:len(x_keep) - k] = x_keep[k:]
            self._end = first + n
            self._add_anchor(first, float(t_first))
            self.arrival_lag.append(time.monotonic() - (float(t_first) + n / self.sample_rate))
            self._cond.notify_all()
            return first

    def _add_anchor(self, index: int, t: float) -> None:
        if self._na == self._amax:
            half = self._amax // 2
            self._aidx[:half] = self._aidx[half:]
            self._at[:half] = self._at[half:]
            self._na = half
        self._aidx[self._na] = index
        self._at[self._na] = t
        self._na += 1

    # -- reading -------------------------------------------------------------------

    @property
    def end(self) -> int:
        """Total samples written so far: the index one past the newest sample."""
        with self._cond:
            return self._end

    @property
    def start(self) -> int:
        """The oldest index still held (0 until the ring has wrapped)."""
        with self._cond:
            return max(0, self._end - self.capacity)

    def read(self, start: int, n: int) -> np.ndarray:
        """A copy of samples ``[start, start + n)`` as float32.

        Indices below 0 read as zeros. Raises :class:`RingOverwrittenError` when part of
        the range was already overwritten and :class:`RingNotWrittenError` when part of
        it is not written yet (see :meth:`wait_for`).
        """
        start, n = int(start), int(n)
        if n < 0:
            raise ValueError(f"read length must be >= 0, got {n}")
        out = np.zeros(n, np.float32)
        with self._cond:
            end = self._end
            if start + n > end:
                raise RingNotWrittenError(
                    f"audio ring: samples [{start}, {start + n}) requested but only {end} written")
            oldest = max(0, end - self.capacity)
            lo = max(start, 0)
            if lo < oldest and lo < start + n:
                raise RingOverwrittenError(
                    f"audio ring: samples from {lo} were overwritten (oldest kept is {oldest}, "
                    f"capacity {self.capacity / self.sample_rate:.1f} s); the reader fell behind")
            if start + n > lo:
                m = start + n - lo
                pos = lo % self.capacity
                k = min(m, self.capacity - pos)
                out[lo - start:lo - start + k] = self._buf[pos:pos + k]
                if k < m:
                    out[lo - start + k:] = self._buf[:m - k]
        return out

    def wait_for(self, index: int, timeout: float | None = None) -> bool:
        """Block until ``end >= index`` (sample ``index - 1`` is written); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._end >= index, timeout)

    # -- clock ---------------------------------------------------------------------

    def _offset_near(self, index: float) -> float:
        """Median of (anchor time - anchor index / rate) over anchors near ``index``.

        The median ignores the jitter of single blocks and, at a real step (an
        overflow that lost samples), switches at the step instead of smearing it.
        Call with the lock held.
        """
        n = self._na
        if n == 0:
            raise RingRangeError("audio ring: no samples written yet, so no capture time is known")
        idx = self._aidx[:n]
        w = self.smooth_s * self.sample_rate
        lo = int(np.searchsorted(idx, index - w, side="left"))
        hi = int(np.searchsorted(idx, index + w, side="right"))
        if hi - lo < 8:  # too few anchors nearby (ends of the record): take the nearest 8
            c = int(np.clip(np.searchsorted(idx, index), 0, n))
            lo, hi = max(0, c - 4), min(n, c + 4)
            if hi - lo < 8:
                lo, hi = max(0, hi - 8), min(n, lo + 8)
        offs = self._at[lo:hi] - idx[lo:hi] / self.sample_rate
        return float(np.median(offs))

    def time_of(self, index: float) -> float:
        """The time.monotonic() at which sample ``index`` was captured (smoothed).

        Works for fractional indices and extrapolates before the first and after the
        last write at the nominal rate.
        """
        with self._cond:
            return index / self.sample_rate + self._offset_near(index)

    def index_at(self, t: float) -> float:
        """Inverse of :meth:`time_of` near the newest anchors: the (fractional) index
        captured at monotonic time ``t``."""
        with self._cond:
            if self._na == 0:
                raise RingRangeError("audio ring: no samples written yet, so no capture time is known")
            guess = (t - self._at[self._na - 1]) * self.sample_rate + self._aidx[self._na - 1]
            return (t - self._offset_near(guess)) * self.sample_rate
