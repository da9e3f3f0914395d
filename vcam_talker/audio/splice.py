"""Silence tests on an :class:`AudioRing` for the delayed playback's splices: where silent
samples may be inserted or skipped without anyone hearing it. Pure functions of the ring."""

from __future__ import annotations

import math

import numpy as np

from vcam_talker.audio.ring import AudioRing, RingRangeError


def ring_peak(ring: AudioRing, a: int, b: int) -> float | None:
    """Peak |x| of ring samples [a, b), or None when they are not all held."""
    if b > ring.end or max(a, 0) < ring.start:
        return None
    try:
        x = ring.read(a, b - a)
    except RingRangeError:
        return None
    return float(np.abs(x).max()) if len(x) else 0.0


def silent_around(ring: AudioRing, p: float, h: int, silence: float) -> bool:
    """True when the audio around position ``p`` is silent (insertion point): ``h`` samples
    each side peak below ``silence``."""
    level = ring_peak(ring, int(math.floor(p)) - h, int(math.floor(p)) + h + 1)
    return level is not None and level < silence


def silent_run(ring: AudioRing, p: float, want: int, h: int, silence: float) -> int:
    """How many samples after ``p`` (at most ``want``) can be skipped in silence, keeping
    ``h`` silent samples on each side of the cut."""
    if want <= 0:
        return 0
    a = int(math.floor(p)) - h
    b = min(int(math.floor(p)) + want + h + 1, ring.end)
    if b - a <= 2 * h or max(a, 0) < ring.start:
        return 0
    try:
        x = ring.read(a, b - a)
    except RingRangeError:
        return 0
    loud = np.flatnonzero(np.abs(x) >= silence)
    first_loud = int(loud[0]) if len(loud) else len(x)
    run = min(want, first_loud - 2 * h)
    return run if run >= 16 else 0  # a handful of samples is not worth a splice
