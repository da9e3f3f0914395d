"""Audio window → facial motion parameters, plus idle life (blinks, head sway).

The features come from a log-mel spectrogram of the window around the frame time:
loudness in the voiced band (200–1500 Hz) drives mouth opening, the spectral centroid
of 250–4000 Hz drives lip spreading (high: "ee") against rounding (low: "oo").
An adaptive level tracker makes opening independent of the input gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vcam_talker.audio.melscale import mel_filters
from vcam_talker.config import ClassicConfig


@dataclass
class Motion:
    """One frame's motion. open/blink in [0,1]; width/round in [0,1]; sway in pixels and degrees
    relative to the face height of 100 px (the renderer scales it)."""

    open: float = 0.0
    width: float = 0.0
    round: float = 0.0
    blink: float = 0.0
    sway_x: float = 0.0
    sway_y: float = 0.0
    sway_deg: float = 0.0


class LogMel:
    """Log-mel frames of a mono window: 32 ms frames every 10 ms, 40 bands 60–7600 Hz."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 40):
        self.sr = sample_rate
        self.n_fft = 512 if sample_rate <= 24000 else 1024
        self.hop = sample_rate // 100
        self.window = np.hanning(self.n_fft).astype(np.float32)
        self.basis, self.freqs = mel_filters(sample_rate, self.n_fft, n_mels, 60.0, min(7600.0, sample_rate / 2))

    def __call__(self, x: np.ndarray, centers: np.ndarray) -> np.ndarray:
        """x: N float32 samples; centers: sample indices -> len(centers) x n_mels power in dB."""
        starts = np.clip(centers - self.n_fft // 2, 0, max(len(x) - self.n_fft, 0))
        idx = starts[:, None] + np.arange(self.n_fft)[None, :]
        frames = np.take(x, idx, mode="clip") * self.window
        spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2 / (self.window.sum() ** 2 / 4)
        mel = spec @ self.basis.T
        return 10.0 * np.log10(np.maximum(mel, 1e-10))


class MotionModel:
    """Stateful: call ``step`` once per frame, in order. ``reset`` starts a new stream."""

    def __init__(self, cfg: ClassicConfig, fps: int, sample_rate: int, before: int, lookahead: int):
        self.cfg = cfg
        self.fps = fps
        self.sr = sample_rate
        self.before = before
        self.lookahead = lookahead
        self.mel = LogMel(sample_rate)
        f = self.mel.freqs
        self.voiced = (f >= 200) & (f <= 1500)
        self.shape_band = (f >= 250) & (f <= 4000)
        self.shape_freqs = np.log2(f[self.shape_band])
        self.reset()

    def reset(self) -> None:
        self.open = 0.0
        self.width = 0.0
        self.round = 0.0
        self.peak_db = -25.0
        rng = np.random.default_rng(self.cfg.seed)
        self._rng = rng
        self._next_blink = float(rng.uniform(0.8, self.cfg.blink_min_s + 0.5))
        self._blink_start = -10.0
        # sway: a few slow incommensurate sines; bounded, so it never drifts
        self._phases = rng.uniform(0, 2 * math.pi, 6)

    def _features(self, samples: np.ndarray) -> tuple[float, float]:
        """Loudness (dBFS-ish) of the voiced band and spread-vs-round in [-1, 1] near the frame time."""
        c = self.before
        # frames from 20 ms before the frame time to the lookahead: the lips anticipate sound
        lo = c - int(0.02 * self.sr)
        hi = c + max(self.lookahead - self.mel.n_fft // 2, 0)
        centers = np.arange(lo, hi + 1, self.mel.hop)
        db = self.mel(samples, centers)
        power = 10 ** (db / 10)
        voiced = 10 * np.log10(power[:, self.voiced].sum(1) + 1e-10)
        # weight the frame time most, the anticipation less
        w = np.exp(-0.5 * ((centers - c) / (0.03 * self.sr)) ** 2)
        level = float(np.log10((w * 10 ** (voiced / 10)).sum() / w.sum() + 1e-10) * 10)
        band = power[:, self.shape_band].sum(0)
        centroid = float((band * self.shape_freqs).sum() / (band.sum() + 1e-12))
        # log2(Hz): ~9.3 (630 Hz, "oo") .. ~10.8 (1.8 kHz, "ee")
        spread = float(np.clip((centroid - 10.0) / 0.8, -1.0, 1.0))
        return level, spread

    def _smooth(self, cur: float, target: float) -> float:
        dt = 1.0 / self.fps
        tau = (self.cfg.attack_ms if target > cur else self.cfg.release_ms) / 1000.0
        a = 1.0 if tau <= 0 else 1.0 - math.exp(-dt / tau)
        return cur + a * (target - cur)

    def step(self, samples: np.ndarray, t: float) -> Motion:
        """samples: the frame's audio window (float32, before+after long); t: frame time in s."""
        cfg = self.cfg
        level, spread = self._features(samples)
        # level tracker: fast up, slow down (about 3 s), so quiet speakers still open the mouth
        if level > self.peak_db:
            self.peak_db = level
        else:
            self.peak_db = max(self.peak_db - 6.0 / self.fps / 3.0, -40.0)
        floor = max(cfg.silence_db, self.peak_db - 35.0)
        if level <= floor:
            target = 0.0
        else:
            target = min(1.0, (level - floor) / max(self.peak_db - floor, 6.0)) ** 1.3
        target *= cfg.mouth_gain
        self.open = self._smooth(self.open, min(target, 1.6))
        voiced = min(1.0, self.open * 3.0)
        self.width = self._smooth(self.width, max(spread, 0.0) * voiced)
        self.round = self._smooth(self.round, max(-spread, 0.0) * voiced)
        return Motion(self.open, self.width, self.round, self._blink(t), *self._sway(t))

    def _blink(self, t: float) -> float:
        if t >= self._next_blink:
            self._blink_start = self._next_blink
            self._next_blink += float(self._rng.uniform(self.cfg.blink_min_s, self.cfg.blink_max_s))
        u = t - self._blink_start
        close, hold, reopen = 0.07, 0.04, 0.13
        if u < 0 or u > close + hold + reopen:
            return 0.0
        if u < close:
            return math.sin(0.5 * math.pi * u / close)
        if u < close + hold:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (u - close - hold) / reopen))

    def _sway(self, t: float) -> tuple[float, float, float]:
        p, s = self._phases, self.cfg.sway
        x = 1.0 * math.sin(2 * math.pi * 0.11 * t + p[0]) + 0.5 * math.sin(2 * math.pi * 0.27 * t + p[1])
        y = 0.6 * math.sin(2 * math.pi * 0.08 * t + p[2]) + 0.3 * math.sin(2 * math.pi * 0.23 * t + p[3])
        r = 0.9 * math.sin(2 * math.pi * 0.07 * t + p[4]) + 0.4 * math.sin(2 * math.pi * 0.19 * t + p[5])
        # a slight nod with speech energy keeps the head from looking frozen while talking
        y += 0.8 * self.open
        return s * x, s * y, s * r
