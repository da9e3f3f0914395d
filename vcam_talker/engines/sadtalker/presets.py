"""Streaming horizons of the coefficient timeline: its parameters and the named presets.

The README's preset table (``benchmarks/bench_presets.py``) gives what each preset costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .audio_hparams import MelParams

#: the reference's coefficient rate
COEFF_FPS = 25


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named streaming horizon. See the README's preset table for what each costs."""

    lookahead: int
    pose_chunk: int


#: ``reference``: every frame equals the offline chain (50 frames is the worst case of
#: window +13, smoothing +6 and a 32-frame pose chunk +31); the others trade that for latency.
PRESETS: dict[str, Preset] = {
    "reference": Preset(lookahead=50, pose_chunk=32),
    "balanced": Preset(lookahead=13, pose_chunk=8),
    "low-latency": Preset(lookahead=3, pose_chunk=4),
}


@dataclass(frozen=True)
class TimelineParams:
    """lookahead: coefficient frames after the shown one its window may read (None: the
    whole clip, the offline form); pose_chunk: frames between pose decodes (1..seq_len);
    style: CVAE class; still: no head motion; expression_scale: multiplies the expression."""

    lookahead: int | None = None
    pose_chunk: int = 32
    style: int = 0
    still: bool = False
    expression_scale: float = 1.0
    fps: int = COEFF_FPS
    mel: MelParams = MelParams()

    @classmethod
    def preset(cls, name: str, **kw) -> TimelineParams:
        p = PRESETS[name]
        return cls(lookahead=p.lookahead, pose_chunk=p.pose_chunk, **kw)

    @property
    def pose_delay(self) -> int:
        """Frames the shown head pose trails the audio so that it is always final: the newest
        final smoothed row can lie ``pose_chunk + 5`` frames behind the newest embedded one."""
        if self.lookahead is None or self.still:
            return 0
        return max(0, self.pose_chunk + 5 - self.lookahead)

    @property
    def samples_per_frame(self) -> int:
        return int(self.mel.samples_per_frame)

    def mel_margin(self) -> tuple[int, int]:
        """(before, after) samples around a coefficient frame's time that its mel window reads,
        with slack for the truncation of the window start and the pre-emphasis."""
        hop, half = self.mel.hop_size, self.mel.n_fft // 2
        spf = self.samples_per_frame
        before = 2 * spf + hop + half + 1
        after = -2 * spf + (self.mel.mel_window - 1) * hop + half  # 2120 at the official settings
        return before, after

    def window_samples(self, video_fps: int) -> tuple[int, int]:
        """(before, after) samples of audio a display frame's window must carry."""
        if self.lookahead is None:
            raise ValueError("the offline timeline has no window: it reads the whole clip")
        before, after = self.mel_margin()
        after += self.lookahead * self.samples_per_frame
        if video_fps != self.fps:  # round(25 t) may lie half a coefficient frame after t
            after += self.samples_per_frame // 2
        # consecutive windows must touch, so no audio between frames is lost
        period = math.ceil(self.mel.sample_rate / video_fps)
        before = max(before, period - after + 1)
        return before, after


def coeff_frame(t: float) -> int:
    """The coefficient frame shown at stream time t (s)."""
    return int(round(t * COEFF_FPS))
