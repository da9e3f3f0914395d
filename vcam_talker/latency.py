"""The audio delay split into where it goes (status and /status), a pure computation.

    audio delay = capture + lookahead + compute + buffering

capture: from a sample's capture (ADC) to it being readable in the ring (device and
    driver buffers, the capture thread), the median per block written.
lookahead: the audio the engine needs after the instant a frame shows (its window spec).
compute: the rest of the median 'frame ready - audio captured': waiting for the engine
    and rendering.
buffering: what the delay keeps on top of the median frame, so that late frames still
    make it (the 98th percentile plus a margin, see DelayEstimator), the half frame a
    picture is on screen before it is seen centred, and the manual trim.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyParts:
    capture_s: float
    lookahead_s: float
    compute_s: float
    buffering_s: float

    @property
    def total_s(self) -> float:
        return self.capture_s + self.lookahead_s + self.compute_s + self.buffering_s

    def as_ms(self) -> dict:
        ms = {k: round(getattr(self, f"{k}_s") * 1e3, 1) for k in ("capture", "lookahead", "compute", "buffering")}
        ms["total"] = round(self.total_s * 1e3, 1)
        return ms


def latency_parts(audio_delay_s: float, lookahead_s: float, arrival_lags: Iterable[float],
                  median_ready_s: float | None) -> LatencyParts | None:
    """The parts of ``audio_delay_s`` (see the module docstring); None before the first
    frame is measured. Parts are not clamped: a negative compute would say the capture
    figure is off, which is worth seeing."""
    if median_ready_s is None:
        return None
    lags = np.asarray(list(arrival_lags), np.float64)
    capture = float(np.median(lags)) if len(lags) else 0.0
    compute = median_ready_s - lookahead_s - capture
    return LatencyParts(capture, lookahead_s, compute, audio_delay_s - (capture + lookahead_s + compute))
