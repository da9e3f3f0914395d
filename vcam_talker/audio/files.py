"""Reading speech files for offline renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from vcam_talker.errors import AudioError


def load_speech(path: Path, sample_rate: int) -> tuple[np.ndarray, int]:
    """Read ``path`` as float32 mono at ``sample_rate`` (any input rate is resampled).

    Returns (samples, original rate). Raises AudioError, naming the file, when it is
    missing, unreadable, empty, or holds NaN/inf samples: a file is refused rather than
    silently repaired, because its audio is muxed into the output as it is.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: cannot read audio ({exc}); use WAV, FLAC or OGG") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio file is empty")
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise AudioError(f"{path}: {bad} samples are NaN or infinite; the file is corrupt")
    mono = data.mean(axis=1)
    if rate != sample_rate:
        import soxr

        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32), rate
