"""Our mel filters against librosa's, the library SadTalker and most TTS front ends use.

librosa is a test-only oracle (a dev dependency): the package builds its filters itself
(`vcam_talker/audio/melscale.py`) so that no daemon process imports numba.
"""

from __future__ import annotations

import numpy as np
import pytest

from vcam_talker.audio.melscale import mel_filters


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [
    (16000, 800, 80, 55.0, 7600.0),   # the sadtalker engine's front end
    (16000, 512, 40, 60.0, 7600.0),   # the classic engine's
    (48000, 2048, 128, 0.0, 24000.0),
])
def test_mel_filters_match_librosa(sr, n_fft, n_mels, fmin, fmax):
    librosa = pytest.importorskip("librosa", reason="librosa is a dev dependency (pip install -e .[dev])")
    ours, centres = mel_filters(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney")
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(centres, librosa.mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax)[1:-1], rtol=1e-9)
