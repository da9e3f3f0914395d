"""A bounded, thread-safe mono audio ring with a sample-index clock.

The capture thread writes blocks; the video scheduler and the delayed playback read
them by absolute sample index (stream time = index / sample_rate, see frames.py). Each
write also records an *anchor*: the time.monotonic() at which its first sample was
captured, so any index can be mapped to its capture time with :meth:`AudioRing.time_of`.

With ``shared=True`` the ring lives in a memfd that another process maps with
:meth:`AudioRing.attach` (the audio helper, :mod:`vcam_talker.audio.helper`). There is
one writer at a time (the capture, or the demo or silence source); readers never take
a lock the writer holds across processes: a sequence counter, odd while a write is under
way, tells a reader to retry a read that overlapped a write (a seqlock), so a stalled
reader can never stall the writer or the other process's readers. A reader that waits
for samples from the other process polls every POLL_S; one in the writer's process is
woken at once. The counter's ordering relies on the CPU keeping stores and loads in
order, as x86-64 does; on weaker CPUs a torn read would misplace one block's samples.
"""

from __future__ import annotations

import mmap
import os
import threading
import time

import numpy as np

from vcam_talker.errors import AudioError


class RingRangeError(AudioError, IndexError):
    """A read asked for samples the ring does not hold (overwritten or not yet written)."""


class RingOverwrittenError(RingRangeError):
    """The requested samples were already overwritten: the reader fell too far behind."""


class RingNotWrittenError(RingRangeError):
    """The requested samples were not written yet: the reader is ahead of the writer."""


_SEQ, _END, _NA, _NLAG = range(4)  # header words
_AMAX = 8192  # anchors kept: the capacity at 10 ms blocks up to 80 s; older ones extrapolate
_LAGS = 200  # arrival lags kept


def _layout(capacity: int) -> tuple[list[tuple[str, type, int, int]], int]:
    """(name, dtype, offset, count) of each array in the shared block, and its size."""
    parts, off = [], 0
    for name, dtype, count in (("hdr", np.int64, 4), ("buf", np.float32, capacity), ("aidx", np.int64, _AMAX),
                               ("at", np.float64, _AMAX), ("lag", np.float64, _LAGS)):
        parts.append((name, dtype, off, count))
        off += -(-count * np.dtype(dtype).itemsize // 8) * 8
    return parts, off


class AudioRing:
    """Bounded mono float32 ring at ``sample_rate`` addressed by absolute sample index.

    Indices count every sample ever written, from 0; the ring keeps the newest
    ``capacity_s`` seconds. Reads of negative indices give zeros (silence before the
    stream start). All methods are thread-safe.

    Args:
        sample_rate: the engine rate in Hz (default 16 kHz).
        capacity_s: seconds of audio kept; older samples are overwritten.
        smooth_s: half-width (s) of the anchor window that :meth:`time_of` smooths over.
        shared: keep the samples in a memfd (``fd``) that another process can map.
    """

    #: how often (s) a reader waiting for samples looks whether the other process wrote them
    POLL_S = 0.002

    def __init__(self, sample_rate: int = 16000, capacity_s: float = 30.0, smooth_s: float = 0.5,
                 *, shared: bool = False, _fd: int | None = None):
        if sample_rate <= 0 or capacity_s <= 0:
            raise ValueError(f"AudioRing needs a positive rate and capacity, got {sample_rate} Hz, {capacity_s} s")
        self.sample_rate = int(sample_rate)
        self.capacity_s = float(capacity_s)
        self.length = None  # a live stream never ends (see stream.windows.AudioSource)
        self.capacity = max(1, int(round(capacity_s * self.sample_rate)))
        self.smooth_s = float(smooth_s)
        parts, size = _layout(self.capacity)
        self.fd: int | None = None
        if _fd is not None or shared:
            if _fd is None:
                _fd = os.memfd_create("vcam-talker-ring", os.MFD_CLOEXEC)
                os.ftruncate(_fd, size)
            self.fd = _fd
            self._mem = mmap.mmap(_fd, size)
        else:
            self._mem = bytearray(size)
        for name, dtype, off, count in parts:
            setattr(self, "_" + name, np.frombuffer(self._mem, dtype, count, off))
        self._amax = _AMAX
        self._wlock = threading.Lock()  # writers of this process, one at a time
        self._cond = threading.Condition(threading.Lock())  # wakes this process's waiters
        self._poll = self.POLL_S if self.fd is not None else None

    @classmethod
    def attach(cls, fd: int, sample_rate: int, capacity_s: float, smooth_s: float = 0.5) -> AudioRing:
        """The ring another process created with ``shared=True``, mapped from its ``fd``."""
        return cls(sample_rate, capacity_s, smooth_s, _fd=fd)

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
        hdr = self._hdr
        with self._wlock:
            first = int(hdr[_END])
            if n == 0:
                return first
            if n >= self.capacity:  # only the newest capacity samples survive anyway
                x_keep, start = x[-self.capacity:], first + n - self.capacity
            else:
                x_keep, start = x, first
            hdr[_SEQ] += 1  # odd: a write is under way
            pos = start % self.capacity
            k = min(len(x_keep), self.capacity - pos)
            self._buf[pos:pos + k] = x_keep[:k]
            if k < len(x_keep):
                self._buf[:len(x_keep) - k] = x_keep[k:]
            self._add_anchor(first, float(t_first))
            nlag = int(hdr[_NLAG])
            self._lag[nlag % _LAGS] = time.monotonic() - (float(t_first) + n / self.sample_rate)
            hdr[_NLAG] = nlag + 1
            hdr[_END] = first + n
            hdr[_SEQ] += 1
        with self._cond:
            self._cond.notify_all()
        return first

    def _add_anchor(self, index: int, t: float) -> None:
        na = int(self._hdr[_NA])
        if na == self._amax:  # full: drop the older half
            half = self._amax // 2
            self._aidx[:half] = self._aidx[half:]
            self._at[:half] = self._at[half:]
            na = half
        self._aidx[na] = index
        self._at[na] = t
        self._hdr[_NA] = na + 1

    # -- consistent reads ----------------------------------------------------------

    def _consistent(self, fn):
        """``fn()`` run until no write overlapped it (see the module docstring); what it
        raises counts only then too (a torn read can fail in any way)."""
        hdr, spins = self._hdr, 0
        while True:
            s1 = int(hdr[_SEQ])
            if not s1 & 1:
                try:
                    result = fn()
                except Exception:
                    if int(hdr[_SEQ]) == s1:
                        raise
                else:
                    if int(hdr[_SEQ]) == s1:
                        return result
            spins += 1
            time.sleep(0 if spins < 8 else 0.0002)  # a writer is mid-block: microseconds

    @property
    def end(self) -> int:
        """Total samples written so far: the index one past the newest sample."""
        return int(self._hdr[_END])

    @property
    def start(self) -> int:
        """The oldest index still held (0 until the ring has wrapped)."""
        return max(0, self.end - self.capacity)

    @property
    def arrival_lag(self) -> list[float]:
        """Per recent write, oldest first: seconds from the capture of its last sample to
        it being readable here (the capture part of the latency; the writer's clock)."""
        def get():
            n = int(self._hdr[_NLAG])
            k = min(n, _LAGS)
            return [float(self._lag[i % _LAGS]) for i in range(n - k, n)]
        return self._consistent(get)

    def read(self, start: int, n: int) -> np.ndarray:
        """A copy of samples ``[start, start + n)`` as float32.

        Indices below 0 read as zeros. Raises :class:`RingOverwrittenError` when part of
        the range was already overwritten and :class:`RingNotWrittenError` when part of
        it is not written yet (see :meth:`wait_for`).
        """
        start, n = int(start), int(n)
        if n < 0:
            raise ValueError(f"read length must be >= 0, got {n}")

        def get():
            out = np.zeros(n, np.float32)
            end = int(self._hdr[_END])
            if start + n > end:
                return out, end, None
            oldest = max(0, end - self.capacity)
            lo = max(start, 0)
            if lo < oldest and lo < start + n:
                return out, end, oldest
            if start + n > lo:
                m = start + n - lo
                pos = lo % self.capacity
                k = min(m, self.capacity - pos)
                out[lo - start:lo - start + k] = self._buf[pos:pos + k]
                if k < m:
                    out[lo - start + k:] = self._buf[:m - k]
            return out, end, -1

        out, end, oldest = self._consistent(get)
        if oldest is None:
            raise RingNotWrittenError(f"audio ring: samples [{start}, {start + n}) requested but only {end} written")
        if oldest >= 0:
            raise RingOverwrittenError(
                f"audio ring: samples from {max(start, 0)} were overwritten (oldest kept is {oldest}, "
                f"capacity {self.capacity / self.sample_rate:.1f} s); the reader fell behind")
        return out

    def wait_for(self, index: int, timeout: float | None = None) -> bool:
        """Block until ``end >= index`` (sample ``index - 1`` is written); False on timeout."""
        if self.end >= index:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.end < index:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                wait = self._poll if left is None else (left if self._poll is None else min(left, self._poll))
                self._cond.wait(wait)
            return True

    # -- clock ---------------------------------------------------------------------

    def _offset_near(self, index: float) -> float:
        """Median of (anchor time - anchor index / rate) over anchors near ``index``.

        The median ignores the jitter of single blocks and, at a real step (an
        overflow that lost samples), switches at the step instead of smearing it.
        Call inside :meth:`_consistent`.
        """
        n = int(self._hdr[_NA])
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
        return self._consistent(lambda: index / self.sample_rate + self._offset_near(index))

    def index_at(self, t: float) -> float:
        """Inverse of :meth:`time_of` near the newest anchors: the (fractional) index
        captured at monotonic time ``t``."""
        def get():
            na = int(self._hdr[_NA])
            if na == 0:
                raise RingRangeError("audio ring: no samples written yet, so no capture time is known")
            guess = (t - self._at[na - 1]) * self.sample_rate + self._aidx[na - 1]
            return (t - self._offset_near(guess)) * self.sample_rate
        return self._consistent(get)
