"""Audio → viseme probabilities: a small numpy MLP over log-mel frames around the frame time.

The network (``vcam_talker/data/visemes.npz``) was trained here by
``scripts/train_visemes.py`` on phoneme-timed speech from espeak-ng and Festival in many
voices and languages, with noise, reverb, gain and band-limiting. Inference is three
matrix products, about 20 µs an evaluation (two a frame).

Features, shared by training and inference so they cannot drift apart: the 40-band log-mel
frames (:class:`~vcam_talker.engines.classic.motion.LogMel`, 10 ms hop) centred from
``CONTEXT[0]`` to ``CONTEXT[-1]`` hops around the frame time, in dB relative to a tracked
peak level (fast up, 2 dB/s down), so the input gain does not matter once it is heard.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

VISEMES = ("rest", "closed", "labiodental", "rounded", "spread", "open", "neutral")
#: log-mel frame offsets around the frame time, in 10 ms hops: 130 ms of history, and
#: frames up to 40 ms ahead, whose 32 ms FFT ends 56 ms ahead: inside the 60 ms lookahead
CONTEXT = np.arange(-13, 5)
#: the closure is also read one hop (10 ms) before the frame time: a frame is on screen for
#: 40 ms, and a p/b/m at speed can close for 30 ms between two frame instants
CLOSE_LOOKBACK = 1
#: audio the features need before the frame time, s (the context, and the lookback)
HISTORY_S = 0.16
PEAK_DECAY_DB_S = 2.0
PEAK_FLOOR_DB = -70.0


def frame_energy(db: np.ndarray) -> np.ndarray:
    """Total power of log-mel frames (..., bands) in dB."""
    return 10.0 * np.log10(np.power(10.0, db / 10.0).sum(-1) + 1e-10)


def track_peak(peak: float, level: float, dt: float) -> float:
    """The level tracker: jumps up to ``level``, falls at PEAK_DECAY_DB_S."""
    return max(level, peak - PEAK_DECAY_DB_S * dt, PEAK_FLOOR_DB)


def features(db: np.ndarray, peak: float) -> np.ndarray:
    """len(CONTEXT) x bands log-mel (dB) and the tracked peak -> the network's input vector."""
    x = np.nan_to_num((db - peak) / 20.0, nan=-3.5, posinf=0.5, neginf=-3.5)
    return np.clip(x, -3.5, 0.5).astype(np.float32).ravel()


class VisemeNet:
    """The trained MLP. ``__call__``: features (F,) or (N, F) -> probabilities (…, len(VISEMES))."""

    def __init__(self, params: dict[str, np.ndarray]):
        names = [str(v) for v in params["visemes"]]
        if tuple(names) != VISEMES:
            raise ValueError(f"viseme net classes {names} differ from {VISEMES}")
        self.layers = []
        i = 0
        while f"w{i}" in params:
            self.layers.append((params[f"w{i}"].astype(np.float32), params[f"b{i}"].astype(np.float32)))
            i += 1
        self.mean = params["mean"].astype(np.float32)
        self.std = params["std"].astype(np.float32)
        if self.layers[0][0].shape[0] != self.mean.shape[0]:
            raise ValueError("viseme net input size does not match its normalisation")

    @classmethod
    def load(cls, path=None) -> "VisemeNet":
        """From ``path``, or the shipped network."""
        with resources.as_file(resources.files("vcam_talker") / "data" / "visemes.npz") as shipped:
            with np.load(path or shipped, allow_pickle=False) as z:
                return cls({k: z[k] for k in z.files})

    @property
    def n_inputs(self) -> int:
        return self.mean.shape[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = (x - self.mean) / self.std
        for j, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if j < len(self.layers) - 1:
                np.maximum(h, 0.0, out=h)
        h = h - h.max(-1, keepdims=True)
        e = np.exp(h)
        return e / e.sum(-1, keepdims=True)


_shared: VisemeNet | None = None


def shared_net() -> VisemeNet:
    """The shipped network, loaded once per process."""
    global _shared
    if _shared is None:
        _shared = VisemeNet.load()
    return _shared
