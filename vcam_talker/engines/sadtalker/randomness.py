"""The timeline's randomness: the reference's blink rule and the pose CVAE's latents.

Blinks are drawn with our own seeded generator (the reference uses python's ``random``), so
parity tests inject the reference's recorded ratio; latents are drawn as the reference draws
them, one ``torch.randn`` of 64 per pose decode.
"""

from __future__ import annotations

import numpy as np
import torch

#: the reference's blink shape; gaps between blinks are drawn from [10, 70) frames
BLINK_SHAPE = (0.5, 0.9, 1.0, 0.9, 0.5)
BLINK_GAP = (10, 70)
#: frames a live schedule remembers behind the newest one asked for
_MEMORY = 200


# --------------------------------------------------------------------------------------------


def reference_blinks(num_frames: int, seed: int) -> np.ndarray:
    """The reference's blink ratio for a whole clip of T frames (its rule, our generator).

    T ≤ 20: no blinks. Otherwise gaps are drawn from [min(10, T), min(T // 2, 70)), the 5-frame
    shape follows each gap, and drawing stops before a blink would reach frame T-1. At T = 21
    that range is empty, where the reference crashes; here the clip has no blinks.
    Returns T float32.
    """
    ratio = np.zeros(num_frames, np.float32)
    lo, hi = min(BLINK_GAP[0], num_frames), min(num_frames // 2, BLINK_GAP[1])
    if num_frames <= 20 or hi <= lo:
        return ratio
    rng = np.random.default_rng(seed)
    frame = 0
    while True:
        start = frame + int(rng.integers(lo, hi))
        if start + len(BLINK_SHAPE) - 1 >= num_frames - 1:
            return ratio
        ratio[start : start + len(BLINK_SHAPE)] = BLINK_SHAPE
        frame = start + len(BLINK_SHAPE)


class BlinkSchedule:
    """Blink ratio per frame of an endless stream: the reference's rule for long clips
    (gaps of 10..69 frames), decided lazily; old frames are forgotten."""

    def __init__(self, seed: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self._rng = np.random.default_rng(seed)
        self._next = 0  # first frame the schedule has not decided yet
        self._ratio: dict[int, float] = {}

    def __call__(self, frame: int) -> float:
        if not self.enabled:
            return 0.0
        while self._next <= frame:
            start = self._next + int(self._rng.integers(*BLINK_GAP))
            for i, v in enumerate(BLINK_SHAPE):
                self._ratio[start + i] = v
            self._next = start + len(BLINK_SHAPE)
        for old in [f for f in self._ratio if f < frame - _MEMORY]:
            del self._ratio[old]
        return self._ratio.get(frame, 0.0)


class Latents:
    """One CVAE latent (64) per index, drawn in index order from a seeded generator."""

    def __init__(self, seed: int, size: int = 64) -> None:
        self._gen = torch.Generator().manual_seed(seed)
        self._size = size
        self._drawn: dict[int, torch.Tensor] = {}
        self._count = 0

    def __call__(self, index: int) -> torch.Tensor:
        while self._count <= index:
            self._drawn[self._count] = torch.randn(self._size, generator=self._gen)
            self._count += 1
        for old in [i for i in self._drawn if i < index - 4]:  # streams only move forward
            del self._drawn[old]
        return self._drawn[index]
