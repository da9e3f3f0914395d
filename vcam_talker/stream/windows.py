"""Per-frame audio windows.

Frame i shows stream time t_i = i / fps. Its window is the engine's fixed-length span
[t_i − before, t_i + after) at the engine's rate. The same code cuts windows from a
whole file (offline render) and from the live capture ring: both are an
:class:`AudioSource`, read by sample index.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vcam_talker.frames import AudioWindow, WindowSpec


class AudioSource(Protocol):
    sample_rate: int
    #: samples in all for a recording; None for a live stream, which never ends
    length: int | None

    def read(self, start: int, n: int) -> np.ndarray:
        """float32 mono samples [start, start + n); zeros before the stream start."""


class ArrayAudio:
    """A whole recording in memory; reads past either end give zeros."""

    def __init__(self, samples: np.ndarray, sample_rate: int):
        self.samples = np.ascontiguousarray(samples, dtype=np.float32)
        self.sample_rate = sample_rate
        self.length = len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, start: int, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        lo, hi = max(start, 0), min(start + n, len(self.samples))
        if hi > lo:
            out[lo - start:hi - start] = self.samples[lo:hi]
        return out


class Windower:
    """Cuts the window for frame ``index`` out of ``source``.

    Frame times are exact rationals of the sample rate, so there is no drift over
    hours: frame i's centre sample is round(i * rate / fps).
    """

    def __init__(self, source: AudioSource, spec: WindowSpec, fps: int):
        if source.sample_rate != spec.sample_rate:
            raise ValueError(f"audio source is {source.sample_rate} Hz, engine wants {spec.sample_rate} Hz")
        self.source = source
        self.spec = spec
        self.fps = fps

    def center(self, index: int) -> int:
        return (index * self.spec.sample_rate * 2 + self.fps) // (2 * self.fps)

    def end_sample(self, index: int) -> int:
        """The last sample (exclusive) frame ``index`` needs: what the live path waits for."""
        return self.center(index) + self.spec.after

    def latest_complete(self, end: int) -> int:
        """The newest frame whose window lies entirely before sample ``end``."""
        i = ((end - self.spec.after) * self.fps) // self.spec.sample_rate
        while i >= 0 and self.end_sample(i) > end:
            i -= 1
        return i

    def window(self, index: int) -> AudioWindow:
        c = self.center(index)
        samples = self.source.read(c - self.spec.before, self.spec.length)
        n = self.source.length
        end = n if n is not None and c + self.spec.after >= n else None
        return AudioWindow(index=index, t=c / self.spec.sample_rate, samples=samples,
                           sample_rate=self.spec.sample_rate, end=end)


def frame_count(n_samples: int, sample_rate: int, fps: int) -> int:
    """Frames for a recording: the video lasts as long as the audio, to within half a frame."""
    return max(1, (n_samples * fps * 2 + sample_rate) // (2 * sample_rate))
