"""Audio window → facial motion parameters, plus idle life (blinks, head sway).

Two things are read from a log-mel spectrogram of the window around the frame time:
- loudness in the voiced band (200–1500 Hz), through an adaptive level tracker (so the
  input gain does not matter), says how far the jaw opens;
- the viseme network (:mod:`.visemes`) says which mouth shape the sound is: shut (p b m),
  lower lip under the teeth (f v), rounded, spread, open, neutral or rest. Shut closes the
  lips whatever the loudness (a nasal is voiced and loud in the low band); the others
  scale the opening and set rounding, spreading and the labiodental tuck.

The shape targets blend by probability and glide with short time constants, which is the
coarticulation: the network sees 40 ms ahead, so the lips start towards the next sound
before it is heard, and an /m/ between two vowels still closes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vcam_talker.audio.melscale import mel_filters
from vcam_talker.config import ClassicConfig
from vcam_talker.engines.classic import visemes as V


@dataclass
class Motion:
    """One frame's motion. open/blink in [0,1]; width/round/tuck in [0,1] (tuck: the lower lip
    drawn up under the upper teeth, for f and v); sway in pixels and degrees relative to the
    face height of 100 px (the renderer scales it)."""

    open: float = 0.0
    width: float = 0.0
    round: float = 0.0
    blink: float = 0.0
    tuck: float = 0.0
    sway_x: float = 0.0
    sway_y: float = 0.0
    sway_deg: float = 0.0


#: each viseme's share of the loudness-driven opening, and its lip targets
OPENING = {"rest": 0.0, "closed": 0.0, "labiodental": 0.2, "rounded": 0.55, "spread": 0.6, "open": 1.0,
           "neutral": 0.7}
_OPEN_W = np.array([OPENING[v] for v in V.VISEMES], np.float32)
_I = {v: i for i, v in enumerate(V.VISEMES)}
#: glide time constants, ms (rise, fall): closing must land inside a 40 ms frame
TAU_CLOSE = (8.0, 15.0)
TAU_SHAPE = (25.0, 30.0)
#: the lips start to shut when P(closed) passes SHUT_FROM and are shut SHUT_SPAN above it
SHUT_FROM, SHUT_SPAN = 0.15, 0.25
#: the loudness window's centre, ahead of the frame time (inside the lookahead): the jaw's
#: attack and the shape glides lag the voice, and this centres the mouth on it again
LOUD_LEAD_S = 0.03


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
        self.net = V.shared_net()
        # mel frames: the viseme context, and the loudness frames from 20 ms before the
        # frame time to the lookahead (the lips anticipate sound)
        last = max(self.lookahead - self.mel.n_fft // 2, 0) // self.mel.hop
        self._offsets = np.arange(min(V.CONTEXT[0] - V.CLOSE_LOOKBACK, -2), max(V.CONTEXT[-1], last) + 1)
        self._ctx = np.stack([np.searchsorted(self._offsets, V.CONTEXT - k) for k in range(V.CLOSE_LOOKBACK + 1)])
        self._loud = np.searchsorted(self._offsets, np.arange(-2, last + 1))
        self.reset()

    def reset(self) -> None:
        self.open = 0.0
        self.width = 0.0
        self.round = 0.0
        self.peak_db = -25.0
        self.viseme_peak = -25.0
        self.close = 0.0
        self.tuck = 0.0
        self.shape_open = 0.7
        self.probs = np.zeros(len(V.VISEMES), np.float32)
        rng = np.random.default_rng(self.cfg.seed)
        self._rng = rng
        self._next_blink = float(rng.uniform(0.8, self.cfg.blink_min_s + 0.5))
        self._blink_start = -10.0
        # sway: a few slow incommensurate sines; bounded, so it never drifts
        self._phases = rng.uniform(0, 2 * math.pi, 6)

    def _features(self, samples: np.ndarray) -> tuple[float, np.ndarray]:
        """Loudness (dBFS-ish) of the voiced band near the frame time, and the viseme
        probabilities (1 + CLOSE_LOOKBACK, len(VISEMES)): at the frame time, then a hop
        earlier."""
        if not np.isfinite(samples).all():  # NaN or inf from a broken source: heard as silence
            samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
        c = self.before
        centers = c + self._offsets * self.mel.hop
        db = self.mel(samples, centers)
        loud = db[self._loud]
        voiced = 10 * np.log10(np.power(10.0, loud[:, self.voiced] / 10).sum(1) + 1e-10)
        # weight the frame time most, the anticipation less
        w = np.exp(-0.5 * ((centers[self._loud] - c - LOUD_LEAD_S * self.sr) / (0.03 * self.sr)) ** 2)
        level = float(np.log10((w * 10 ** (voiced / 10)).sum() / w.sum() + 1e-10) * 10)
        ctx = db[self._ctx]  # (lookback + 1, context, bands): the frame time first
        self.viseme_peak = V.track_peak(self.viseme_peak, float(np.nan_to_num(V.frame_energy(ctx[0]).max(), nan=-100.0)),
                                        1.0 / self.fps)
        probs = self.net(np.stack([V.features(c, self.viseme_peak) for c in ctx]))
        return (level if math.isfinite(level) else -100.0), probs

    def _smooth(self, cur: float, target: float, taus: tuple[float, float] | None = None) -> float:
        dt = 1.0 / self.fps
        rise, fall = taus or (self.cfg.attack_ms, self.cfg.release_ms)
        tau = (rise if target > cur else fall) / 1000.0
        a = 1.0 if tau <= 0 else 1.0 - math.exp(-dt / tau)
        return cur + a * (target - cur)

    def step(self, samples: np.ndarray, t: float) -> Motion:
        """samples: the frame's audio window (float32, before+after long); t: frame time in s."""
        cfg = self.cfg
        level, probs = self._features(samples)
        p = probs[0]
        self.probs = p
        # closed: at the frame time or just before it, so a brief closure is not missed
        p_closed = float(probs[:, _I["closed"]].max())
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
        # the shape: p/b/m shut the lips whatever the loudness; the rest share the opening
        speaking = 1.0 - p[_I["rest"]] - p[_I["closed"]]
        shape_open = float(p @ _OPEN_W) / max(speaking, 0.05)
        self.shape_open = self._smooth(self.shape_open, shape_open, TAU_SHAPE)
        shut = float(np.clip((p_closed - SHUT_FROM) / SHUT_SPAN, 0.0, 1.0))
        self.close = self._smooth(self.close, shut * shut * (3 - 2 * shut), TAU_CLOSE)
        voiced = min(1.0, self.open * 3.0)
        norm = max(speaking + p[_I["closed"]], 0.05)
        spread = (p[_I["spread"]] + 0.3 * p[_I["open"]]) / norm
        self.width = self._smooth(self.width, spread * voiced, TAU_SHAPE)
        self.round = self._smooth(self.round, p[_I["rounded"]] / norm * voiced, TAU_SHAPE)
        self.tuck = self._smooth(self.tuck, p[_I["labiodental"]] / norm * voiced, TAU_CLOSE)
        opening = self.open * self.shape_open * (1.0 - self.close)
        # shut lips press together: the rounding and spreading glide back after the closure
        press = 1.0 - 0.8 * self.close
        return Motion(opening, self.width * press, self.round * press, self._blink(t), self.tuck, *self._sway(t))

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
