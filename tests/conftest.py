"""Shared fixtures: real speech from espeak-ng, the default avatar, an isolated cache."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.pulse_env import pulse_server  # noqa: F401  (private PulseAudio for the audio tests)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AVATAR = ROOT / "avatars" / "default.png"


def espeak_wav(path: Path, text: str, rate: int = 16000, speed: int = 150) -> Path:
    """Synthesize ``text`` with espeak-ng and resample to ``rate`` Hz mono."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: run scripts/setup.sh (it installs the Debian package)")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(raw), text], check=True)
    audio, sr = sf.read(raw, dtype="float32")
    if sr != rate:
        import librosa  # a dev dependency; the tests' speech was tuned with its resampler

        audio = librosa.resample(audio, orig_sr=sr, target_sr=rate)
    sf.write(path, audio.astype(np.float32), rate, subtype="PCM_16")
    raw.unlink()
    return path


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """About 4 s of speech with a 1 s silence gap in the middle and silence at both ends."""
    d = tmp_path_factory.mktemp("speech")
    a = espeak_wav(d / "a.wav", "Hello there. This is a test of the talking avatar.")
    b = espeak_wav(d / "b.wav", "Papa bought a big map, and we sang along.")
    xa, _ = sf.read(a, dtype="float32")
    xb, _ = sf.read(b, dtype="float32")
    gap = np.zeros(16000, np.float32)
    edge = np.zeros(8000, np.float32)
    out = d / "speech.wav"
    sf.write(out, np.concatenate([edge, xa, gap, xb, edge]), 16000, subtype="PCM_16")
    return out


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("VCAM_TALKER_CACHE", str(d))
    return d


# ---- a busy machine: `pytest --load N` runs N CPU-bound processes beside the tests ----

def pytest_addoption(parser):
    parser.addoption("--load", type=int, default=0, metavar="N",
                     help="run N busy processes (one core each, at this process's nice level) during the session")


_BUSY = "import numpy as np\nx = np.random.rand(256, 256)\nwhile True:\n    x = (x @ x) / 256.0\n"


@pytest.fixture(scope="session", autouse=True)
def busy_load(request):
    """What a meeting app does to the machine: takes whole cores. Numpy matmuls on one
    thread each (OMP_NUM_THREADS=1), so N processes saturate N cores."""
    import os
    import subprocess
    import sys

    n = request.config.getoption("--load")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _BUSY], env=env) for _ in range(n)]
    yield n
    for p in procs:
        p.kill()
        p.wait()
