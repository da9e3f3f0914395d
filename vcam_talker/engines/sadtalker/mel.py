"""The reference's log-mel spectrogram and its per-video-frame windows, in vectorised numpy.

Recipe (defaults of :class:`MelParams`):

- 16 kHz mono float wave, cut to a whole number of 25 fps frames (640 samples each);
- pre-emphasis ``y[n] = x[n] - 0.97 x[n-1]`` from a zero state, in float64;
- STFT: n_fft 800, hop 200, periodic Hann window of 800, centred with 400 zeros on each side,
  so a wave of L samples gives ``1 + L // 200`` frames; magnitude, not power;
- 80 Slaney-scale, Slaney-normalised mel filters from 55 to 7600 Hz (librosa's filters);
- ``20 log10(max(1e-5, mel)) - 20`` dB, mapped to [-4, 4] with min_level_db -100 and clipped.

Video frame ``i`` then sees the 16 mel frames starting at ``int(80 * (i - 2) / 25)`` (truncation
toward zero), each index clamped to the spectrogram: 80 ms before to about 130 ms after the
frame's start. The coefficient timeline (:mod:`.timeline`) computes the rows as audio arrives
and cuts the windows.
"""

from __future__ import annotations

import numpy as np

from vcam_talker.audio.melscale import mel_filters

from .audio_hparams import MelParams


def preemphasis(wav: np.ndarray, coef: float) -> np.ndarray:
    """First-order pre-emphasis from a zero initial state. (L,) -> (L,) float64."""
    x = np.asarray(wav, dtype=np.float64)
    y = x.copy()
    y[1:] -= coef * x[:-1]
    return y


class MelFrontend:
    """Holds the mel filter bank and STFT window for one :class:`MelParams` (no global cache).

    ``spectrogram(wav)``: (L,) float wave at ``sample_rate`` -> (1 + L // hop_size, num_mels),
    normalised log-mel, frames × mels (the reference's output transposed).
    """

    def __init__(self, params: MelParams = MelParams()) -> None:
        p = params
        if not (p.symmetric_mels and p.allow_clipping_in_normalization):
            raise ValueError("only the reference's symmetric, clipped normalisation is implemented")
        self.params = p
        # float32 filters, as librosa returns them; the reference multiplies them into float64 magnitudes
        self.mel_basis = mel_filters(p.sample_rate, p.n_fft, p.num_mels, p.fmin, p.fmax)[0].astype(np.float64)
        win = np.hanning(p.win_size + 1)[:-1]  # periodic Hann
        lpad = (p.n_fft - p.win_size) // 2
        self.window = np.pad(win, (lpad, p.n_fft - p.win_size - lpad))

    def magnitudes(self, wav: np.ndarray) -> np.ndarray:
        """|STFT| of the pre-emphasised wave. (L,) -> (1 + L // hop_size, n_fft // 2 + 1) float64."""
        p = self.params
        y = preemphasis(wav, p.preemphasis)
        half = p.n_fft // 2
        padded = np.pad(y, (half, half))
        count = 1 + len(y) // p.hop_size
        frames = np.lib.stride_tricks.sliding_window_view(padded, p.n_fft)[:: p.hop_size][:count]
        return np.abs(np.fft.rfft(frames * self.window, axis=1))

    def spectrogram(self, wav: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """Normalised log-mel, computed in float64. (L,) -> (1 + L // hop_size, num_mels) ``dtype``."""
        return self.normalise(self.magnitudes(wav)).astype(dtype)

    def normalise(self, magnitudes: np.ndarray) -> np.ndarray:
        """|STFT| rows (F, n_fft // 2 + 1) float64 -> normalised log-mel rows (F, num_mels) float64."""
        p = self.params
        mel = magnitudes @ self.mel_basis.T
        floor = np.exp(p.min_level_db / 20 * np.log(10))
        db = 20 * np.log10(np.maximum(floor, mel)) - p.ref_level_db
        top = p.max_abs_value
        return np.clip(2 * top * ((db - p.min_level_db) / -p.min_level_db) - top, -top, top)


def window_start(frame: int | np.ndarray, params: MelParams = MelParams()) -> int | np.ndarray:
    """First mel frame of video frame ``frame``'s window: ``int(80 * ((i - 2) / 25))``.

    The float operations are the reference's (divide, then multiply, then truncate toward 0),
    so i=0 gives -6 and i=1 gives -3. Scalar or integer array in, same shape out.
    """
    i = np.asarray(frame)
    start = np.trunc(params.mel_frames_per_second * ((i - 2) / float(params.fps))).astype(np.int64)
    return int(start) if start.ndim == 0 else start
