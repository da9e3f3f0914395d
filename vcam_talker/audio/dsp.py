"""Pure signal steps of the live audio path, on plain arrays: :func:`downmix` to mono,
:func:`sanitize` (no NaN/inf, no overs) and the stateful :class:`StreamResampler` that the
capture and the delayed playback share."""

from __future__ import annotations

import math

import numpy as np


def downmix(block: np.ndarray) -> np.ndarray:
    """Mono float32 from a (frames,) or (frames, channels) block: the channel mean."""
    x = np.asarray(block, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.shape[1] == 1:
        return x[:, 0]
    return x.mean(axis=1, dtype=np.float32)


def sanitize(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Replace NaN/inf by 0 and clip to [-1, 1].

    Returns (clean float32 copy, non-finite count, clipped count). Non-finite samples are
    zeroed rather than clipped: an inf is a broken driver value, not a loud sample, and
    one NaN would otherwise poison the resampler state for good.
    """
    y = np.array(x, dtype=np.float32, copy=True)
    bad = ~np.isfinite(y)
    n_bad = int(bad.sum())
    if n_bad:
        y[bad] = 0.0
    over = np.abs(y) > 1.0
    n_clip = int(over.sum())
    if n_clip:
        np.clip(y, -1.0, 1.0, out=y)
    return y, n_bad, n_clip


class StreamResampler:
    """Stateful band-limited resampler (Kaiser-windowed sinc) with adjustable speed.

    Block boundaries are invisible: the input history needed by the filter is kept
    between calls, so a stream cut into any blocks resamples exactly as in one piece.
    Positions are absolute input indices: output ``k`` sits at input position
    ``start + sum(steps)``, where ``step = in_rate / out_rate * speed``; the filter is
    symmetric, so it adds no delay beyond waiting for ``half_taps`` future inputs.
    ``speed`` may change between calls (gentle time-stretch, a few percent).

    Inputs before index 0 are zeros (silence before the stream start).
    """

    def __init__(self, in_rate: float, out_rate: float, *, start: float = 0.0, zero_crossings: int = 12,
                 phases: int = 256, cutoff: float = 0.9, beta: float = 7.0):
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"resampler rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = float(in_rate)
        self.out_rate = float(out_rate)
        self.speed = 1.0
        scale = min(1.0, self.out_rate / self.in_rate) * cutoff  # low-pass below both Nyquists
        half = zero_crossings / scale
        self._k2 = int(math.ceil(half))  # taps each side
        taps = 2 * self._k2
        self._koff = np.arange(taps) - (self._k2 - 1)  # input offsets from floor(position)
        frac = np.arange(phases + 1)[:, None] / phases
        t = frac - self._koff[None, :]
        u = np.clip(1.0 - (t / half) ** 2, 0.0, None)
        kernel = scale * np.sinc(scale * t) * np.i0(beta * np.sqrt(u)) / np.i0(beta)
        kernel[np.abs(t) >= half] = 0.0
        kernel /= kernel.sum(axis=1, keepdims=True)  # unity gain at DC for every phase
        self._table = kernel.astype(np.float32)
        self._phases = phases
        self._pos = float(start)
        self._base = int(math.floor(start)) - (self._k2 - 1)
        self._buf = np.zeros(max(0, -self._base), np.float32)  # zeros before index 0

    @property
    def half_taps(self) -> int:
        """Future input samples the filter needs beyond an output's position."""
        return self._k2

    @property
    def step(self) -> float:
        """Input samples consumed per output sample."""
        return self.in_rate / self.out_rate * self.speed

    @property
    def position(self) -> float:
        """Absolute input position of the next output sample."""
        return self._pos

    @property
    def next_input_index(self) -> int:
        """Absolute index of the next input sample :meth:`process` expects."""
        return self._base + len(self._buf)

    def _positions(self, n: int) -> np.ndarray:
        return self._pos + np.arange(n) * self.step

    def input_needed(self, n_out: int) -> int:
        """How many more input samples :meth:`process` needs to produce ``n_out`` outputs."""
        if n_out <= 0:
            return 0
        last = math.floor(self._positions(n_out)[-1]) + self._k2
        return max(0, last - (self.next_input_index - 1))

    def skip(self, n_in: float) -> None:
        """Jump the position ``n_in`` input samples ahead (drop them)."""
        self._pos += float(n_in)
        self._trim()

    def process(self, x: np.ndarray, max_out: int | None = None) -> np.ndarray:
        """Append input ``x`` and return every output it completes (at most ``max_out``)."""
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if len(x):
            self._buf = np.concatenate([self._buf, x]) if len(self._buf) else x.copy()
        limit = self.next_input_index - 1 - self._k2  # floor(position) may be at most this
        n = int(math.ceil((limit + 1 - self._pos) / self.step)) if math.floor(self._pos) <= limit else 0
        if max_out is not None:
            n = min(n, max_out)
        if n <= 0:
            return np.zeros(0, np.float32)
        p = self._positions(n + 1)
        fl = np.floor(p)
        n = min(n, int(np.count_nonzero(fl <= limit)))  # guard against rounding at the edge
        p, fl = p[:n], fl[:n]
        rel = fl.astype(np.int64) - self._base - (self._k2 - 1)
        win = self._buf[rel[:, None] + np.arange(len(self._koff))[None, :]]
        f = (p - fl) * self._phases
        i0 = np.minimum(f.astype(np.int64), self._phases - 1)
        w = (f - i0).astype(np.float32)[:, None]
        coef = self._table[i0] * (1.0 - w) + self._table[i0 + 1] * w
        y = np.einsum("ij,ij->i", win, coef).astype(np.float32)
        self._pos += n * self.step
        self._trim()
        return y

    def _trim(self) -> None:
        keep_from = math.floor(self._pos) - (self._k2 - 1)
        drop = keep_from - self._base
        if drop > 0:
            self._buf = self._buf[drop:] if drop < len(self._buf) else np.zeros(0, np.float32)
            self._base = keep_from
