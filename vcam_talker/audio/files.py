"""Reading speech files for offline renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from vcam_talker.errors import AudioError
from vcam_talker.safeio import MB, regular_file

MAX_AUDIO_BYTES = 1024 * MB
MIN_RATE, MAX_RATE = 4000, 384000
MAX_CHANNELS = 32
MAX_SECONDS = 4 * 3600
#: the largest sample magnitude accepted (full scale is 1.0)
MAX_PEAK = 16.0


def load_speech(path: Path, sample_rate: int) -> tuple[np.ndarray, int]:
    """Read ``path`` as float32 mono at ``sample_rate`` (any input rate is resampled).

    Returns (samples, original rate). Raises AudioError, naming the file, when it is
    missing, unreadable, empty, or holds NaN/inf samples: a file is refused rather than
    silently repaired, because its audio is muxed into the output as it is.
    """
    path = Path(path)
    regular_file(path, "audio file", MAX_AUDIO_BYTES, AudioError)  # stat only: FIFOs, devices refused
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: cannot read audio ({exc}); use WAV, FLAC or OGG") from None
    # from the header, before anything is decoded: a 1 Hz file makes the resampler ask
    # for gigabytes, a huge frame count would be read into memory whole
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise AudioError(f"{path}: sample rate {info.samplerate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError(f"{path}: {info.channels} channels; at most {MAX_CHANNELS} are supported")
    if info.frames > MAX_SECONDS * info.samplerate:
        raise AudioError(f"{path}: audio is {info.frames / info.samplerate / 3600:.1f} h long; "
                         f"at most {MAX_SECONDS // 3600} h are supported")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True, frames=MAX_SECONDS * info.samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: cannot read audio ({exc}); use WAV, FLAC or OGG") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio file is empty")
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise AudioError(f"{path}: {bad} samples are NaN or infinite; the file is corrupt")
    loud = int((np.abs(data) > MAX_PEAK).sum())
    if loud:  # full scale is 1.0; float files may overshoot a little, not by 10^20
        raise AudioError(f"{path}: {loud} samples exceed ±{MAX_PEAK:g} (full scale is 1.0); the file is corrupt")
    mono = data.mean(axis=1)
    if rate != sample_rate:
        import soxr

        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32), rate
