"""Slaney's mel scale and area-normalised triangular filters, shared by both engines.

Numerically the same as ``librosa.filters.mel(htk=False, norm="slaney")`` (the sadtalker
parity test pins this against the reference's mel.npz), without importing librosa, which
drags numba into every process that only wants filters.
"""

from __future__ import annotations

import numpy as np

_F_SP = 200.0 / 3  # Hz per mel below 1 kHz
_MIN_LOG_HZ, _MIN_LOG_MEL = 1000.0, 15.0
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(f) -> np.ndarray:
    """Linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    log = _MIN_LOG_MEL + np.log(np.maximum(f, 1e-9) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log, f / _F_SP)


def mel_to_hz(m) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), m * _F_SP)


def mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Filters (n_mels x n_fft//2+1, float32) and their centre frequencies (Hz)."""
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    bins = np.linspace(0, sr / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
    return (tri * (2.0 / (hi - lo))).astype(np.float32), edges[1:-1]
