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
frame's start. :func:`mel_window` gives one window from a mel array, so a streaming caller can
build windows as the spectrogram grows; :func:`last_mel_frame` says how far it must have grown.
"""

from __future__ import annotations

import numpy as np

from vcam_talker.audio.melscale import mel_filters

from .audio_hparams import MelParams


def crop_to_frames(wav: np.ndarray, params: MelParams = MelParams()) -> tuple[np.ndarray, int]:
    """Cut (or zero-pad) a wave to a whole number of video frames, as the reference's loader does.

    wav: (L,) float -> ((T * samples_per_frame,), T) with T = int(L / samples_per_frame).
    """
    wav = np.asarray(wav)
    spf = params.samples_per_frame
    num_frames = int(len(wav) / spf)
    length = int(num_frames * spf)
    if len(wav) >= length:
        return wav[:length], num_frames
    return np.pad(wav, (0, length - len(wav))), num_frames


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
        p = self.params
        mel = self.magnitudes(wav) @ self.mel_basis.T
        floor = np.exp(p.min_level_db / 20 * np.log(10))
        db = 20 * np.log10(np.maximum(floor, mel)) - p.ref_level_db
        top = p.max_abs_value
        norm = np.clip(2 * top * ((db - p.min_level_db) / -p.min_level_db) - top, -top, top)
        return norm.astype(dtype)


def melspectrogram(wav: np.ndarray, params: MelParams = MelParams()) -> np.ndarray:
    """One-shot :meth:`MelFrontend.spectrogram`. (L,) -> (1 + L // hop_size, num_mels) float32."""
    return MelFrontend(params).spectrogram(wav)


def window_start(frame: int | np.ndarray, params: MelParams = MelParams()) -> int | np.ndarray:
    """First mel frame of video frame ``frame``'s window: ``int(80 * ((i - 2) / 25))``.

    The float operations are the reference's (divide, then multiply, then truncate toward 0),
    so i=0 gives -6 and i=1 gives -3. Scalar or integer array in, same shape out.
    """
    i = np.asarray(frame)
    start = np.trunc(params.mel_frames_per_second * ((i - 2) / float(params.fps))).astype(np.int64)
    return int(start) if start.ndim == 0 else start


def last_mel_frame(frame: int, params: MelParams = MelParams()) -> int:
    """Index of the last mel frame that video frame ``frame``'s window reads, before clamping."""
    return window_start(frame, params) + params.mel_window - 1


def mel_window(mel: np.ndarray, frame: int, params: MelParams = MelParams()) -> np.ndarray:
    """The window for one video frame. mel: (F, num_mels) -> (num_mels, mel_window).

    Indices past either end are clamped to the first/last row of ``mel``, so when streaming,
    call this once ``mel`` has more than :func:`last_mel_frame` rows (or holds the whole clip).
    """
    idx = np.clip(window_start(frame, params) + np.arange(params.mel_window), 0, len(mel) - 1)
    return mel[idx].T


def mel_windows(mel: np.ndarray, num_frames: int, params: MelParams = MelParams()) -> np.ndarray:
    """Windows for video frames 0..num_frames-1. mel: (F, num_mels) -> (T, num_mels, mel_window)."""
    starts = window_start(np.arange(num_frames), params)
    idx = np.clip(starts[:, None] + np.arange(params.mel_window)[None, :], 0, len(mel) - 1)
    return np.ascontiguousarray(mel[idx].transpose(0, 2, 1))


def wav_to_windows(wav: np.ndarray, params: MelParams = MelParams()) -> tuple[np.ndarray, np.ndarray]:
    """The reference's whole audio front end for a float wave at ``sample_rate``.

    wav: (L,) -> (mel (1 + T*640 // 200, 80) float32, indiv_mels (T, 80, 16) float32),
    T = int(L / 640). The windows are cut from the float64 spectrogram, then cast.
    """
    cropped, num_frames = crop_to_frames(wav, params)
    mel64 = MelFrontend(params).spectrogram(cropped, dtype=np.float64)
    return mel64.astype(np.float32), mel_windows(mel64, num_frames, params).astype(np.float32)
