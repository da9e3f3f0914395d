"""Classic engine speed: render step FPS (single thread), offline render vs real time, prepare time.

    .venv/bin/python benchmarks/bench_classic.py [--json PATH] [--frames N]

All variants run in this one process, side by side, so ratios are comparable on a
noisy shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# single thread: numpy/BLAS pools must be sized before numpy loads
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import report  # noqa: E402
from vcam_talker.config import Config, from_dict, to_dict  # noqa: E402
from vcam_talker.engines.classic.engine import ClassicEngine  # noqa: E402
from vcam_talker.render import render_file  # noqa: E402
from vcam_talker.stream.windows import ArrayAudio, Windower  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "vcam_talker" / "data" / "demo_speech.wav"


def config(size: int) -> Config:
    d = to_dict(Config())
    d["video"].update(width=size, height=size)
    return from_dict(d)


def bench_render_step(size: int, frames: int, audio: np.ndarray) -> dict:
    eng = ClassicEngine(config(size))
    av = eng.prepare(eng.config.avatar_path())
    win = Windower(ArrayAudio(audio, 16000), eng.window_spec, 25)
    windows = [win.window(i) for i in range(frames)]
    motions = [eng.motion_for(w) for w in windows]
    r = eng.renderer(av)
    for m in motions[:10]:
        r.render(m)
    t_warp = []
    for m in motions:
        t = time.perf_counter()
        r.render(m)
        t_warp.append(time.perf_counter() - t)
    eng.reset()
    t_all = []
    for w in windows:
        t = time.perf_counter()
        eng.render(w, av)
        t_all.append(time.perf_counter() - t)
    return {"warp_ms_p50": 1e3 * statistics.median(t_warp), "step_ms_p50": 1e3 * statistics.median(t_all),
            "step_ms_p95": 1e3 * float(np.percentile(t_all, 95)), "fps": 1.0 / statistics.mean(t_all)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="where to write results (default benchmarks/results/)")
    ap.add_argument("--frames", type=int, default=250)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    demo, rate = sf.read(str(DEMO), dtype="float32")
    audio = np.tile(demo, 2)[: 16000 * 10]  # 10 s of speech

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VCAM_TALKER_CACHE"] = str(Path(tmp) / "cache")
        cold, warm = [], []
        for i in range(3):
            os.environ["VCAM_TALKER_CACHE"] = str(Path(tmp) / f"cache{i}")
            for target in (cold, warm):
                eng = ClassicEngine(config(512))
                t = time.perf_counter()
                eng.prepare(eng.config.avatar_path())
                target.append(time.perf_counter() - t)
        rows += [("prepare cold (detector load + detect + rig), 512", 1e3 * statistics.median(cold), "ms"),
                 ("prepare cached, 512", 1e3 * statistics.median(warm), "ms")]
        steps = {}
        for size in (256, 512):
            steps[size] = s = bench_render_step(size, args.frames, audio)
            rows += [(f"render step {size}x{size} (motion + warp), single thread", s["fps"], "fps"),
                     (f"render step {size}x{size} p50", s["step_ms_p50"], "ms"),
                     (f"render step {size}x{size} p95", s["step_ms_p95"], "ms"),
                     (f"warp only {size}x{size} p50", s["warp_ms_p50"], "ms")]
        wav = Path(tmp) / "speech10s.wav"
        sf.write(str(wav), audio, 16000, subtype="PCM_16")
        res = render_file(config(512), wav, Path(tmp) / "out.mp4", progress=False)
        rows += [("offline render 10 s speech 512x512 25 fps, end to end", res.realtime_factor, "x real time"),
                 ("offline render wall", res.wall_s, "s"),
                 ("share of one core for live 25 fps at 512 (render step)", 25 / steps[512]["fps"] * 100, "%")]
    report("bench_classic", rows, out=args.json)


if __name__ == "__main__":
    main()
