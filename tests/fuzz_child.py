"""One fuzz case, run by tests/test_fuzz.py in a subprocess under resource limits:
``python -m tests.fuzz_child KIND PATH``. Prints one JSON line: {"ok": summary} for a
result, {"error": message} for a VcamError; anything else is a traceback, which the test
counts as a failure. "s" is the wall time of the operation itself, imports excluded."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def image(path: str) -> str:
    from vcam_talker.avatar.image import load_image

    img = load_image(Path(path), 2048)
    return f"{img.rgb.shape} {img.rgb.dtype} from {img.original_size}"


def audio(path: str) -> str:
    from vcam_talker.audio.files import load_speech

    x, rate = load_speech(Path(path), 16000)
    return f"{len(x)} samples from {rate} Hz, peak {abs(x).max():.2f}"


def config(path: str) -> str:
    from vcam_talker import config as c

    cfg = c.load(Path(path))
    return f"valid, avatar {cfg.avatar_path()}"


def prepare(path: str) -> str:
    """The classic engine prepares the default avatar with the (tampered) cache in
    $VCAM_TALKER_CACHE; then renders a frame with what it got."""
    import numpy as np

    from vcam_talker.config import Config
    from vcam_talker.engines.classic.engine import ClassicEngine
    from vcam_talker.frames import AudioWindow

    eng = ClassicEngine(Config())
    av = eng.prepare(Path(path))
    spec = eng.window_spec
    frame = eng.render(AudioWindow(0, 0.0, np.zeros(spec.length, np.float32), spec.sample_rate), av)
    return f"from_cache={av.from_cache} frame {frame.shape}"


def prepare_any(path: str) -> str:
    """prepare_avatar itself, which every engine's prepare (sadtalker's too) goes through,
    with the cache off."""
    from vcam_talker.avatar.prepare import prepare_avatar
    from vcam_talker.config import Config, from_dict, to_dict

    d = to_dict(Config())
    d["cache"]["enabled"] = False
    return f"image {prepare_avatar(Path(path), from_dict(d), 'fuzz').image.shape}"


def unit(path: str) -> str:
    """``path`` is the hostile config path itself; the unit is rendered and checked with
    systemd-analyze when present."""
    import shutil
    import subprocess
    import tempfile

    from vcam_talker.service import render_unit

    text = render_unit(["/bin/true"], Path(path))
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "vcam-talker.service"
        f.write_text(text)
        if shutil.which("systemd-analyze"):
            r = subprocess.run(["systemd-analyze", "verify", str(f)], capture_output=True, text=True, timeout=8)
            if r.returncode != 0:
                raise AssertionError(f"systemd-analyze: {r.stderr.strip()}")
    lines = [ln for ln in text.splitlines() if ln.startswith("ExecStart")]
    assert len(lines) == 1 and not any(ln.startswith("ExecStartPre") for ln in text.splitlines())
    return lines[0]


def main() -> None:
    from vcam_talker.errors import VcamError

    kind, path = sys.argv[1], sys.argv[2]
    t = time.monotonic()
    try:
        out = {"ok": globals()[kind](path)}
    except VcamError as exc:
        out = {"error": str(exc)}
    out["s"] = round(time.monotonic() - t, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
