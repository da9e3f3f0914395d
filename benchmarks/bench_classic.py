"""Classic engine speed: render step FPS (single thread), offline render vs real time, prepare time.

    .venv/bin/python benchmarks/bench_classic.py [--json PATH] [--frames N] [--compare CHECKOUT]

``--compare`` also times another checkout's render step (say, the last release's), in
child processes alternated with this tree's, three rounds each, so "before" and "after"
come from the same minutes of the same machine.

All variants run in this one process, side by side, so ratios are comparable on a
noisy shared machine. It prints the CPU model, the cores this process may use and the
thread settings first, a bare cv2.remap of a whole 512² frame as a yardstick for the
machine, and where a 512² render step's time goes (motion, then each renderer stage).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import platform
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

# VCAM_BENCH_ROOT: the checkout to time (--compare's children)
sys.path.insert(0, os.environ.get("VCAM_BENCH_ROOT") or str(Path(__file__).resolve().parents[1]))
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


def cpu_settings() -> dict:
    """What a figure depends on besides the code: the CPU, the cores and the thread pools."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores_usable": cores, "cpu_count": os.cpu_count(),
            "cv2_threads": cv2.getNumThreads(), "cv2": cv2.__version__, "numpy": np.__version__,
            **{v: os.environ.get(v, "") for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
            "loadavg_1min": os.getloadavg()[0]}


def bare_remap_ms(reps: int = 200) -> float:
    """A whole-frame 512² bilinear remap with float maps: the machine's yardstick."""
    img = np.random.default_rng(0).integers(0, 255, (512, 512, 3), np.uint8)
    ys, xs = np.mgrid[0:512, 0:512].astype(np.float32)
    xs += 0.3
    ys += 0.2
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        cv2.remap(img, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        t.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(t)


def stage_breakdown(size: int, frames: int, audio: np.ndarray) -> dict[str, float]:
    """Median ms per frame of each stage of the render step (the renderer's laps)."""
    eng = ClassicEngine(config(size))
    av = eng.prepare(eng.config.avatar_path())
    win = Windower(ArrayAudio(audio, 16000), eng.window_spec, 25)
    r = eng.renderer(av)
    laps: dict[str, list[float]] = {}

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        laps.setdefault(name, []).append(now - t)
        t = now

    for i in range(frames):
        w = win.window(i)
        t = time.perf_counter()
        m = eng.motion_for(w)
        lap("motion (log-mel features)")
        r.render(m, lap=lap)
    return {k: 1e3 * statistics.mean(v) for k, v in laps.items()}


def compare(other: Path, frames: int) -> list[tuple[str, float, str]]:
    """512² and 256² step p50 of ``other`` and of this tree, alternated in child processes."""
    got: dict[str, list[dict]] = {"before": [], "this tree": []}
    for _ in range(3):
        for name, root in (("before", other), ("this tree", Path(__file__).resolve().parents[1])):
            env = dict(os.environ, VCAM_BENCH_ROOT=str(root.resolve()))
            out = subprocess.run([sys.executable, __file__, "--step-only", "--frames", str(frames)], env=env,
                                 check=True, capture_output=True, text=True, timeout=600).stdout
            got[name].append(json.loads(out.strip().splitlines()[-1]))
    rows = []
    for name, runs in got.items():
        for size in ("512", "256"):
            rows.append((f"{name}: render step {size}x{size} p50 (median of 3 runs)",
                         statistics.median(r[size] for r in runs), "ms"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="where to write results (default benchmarks/results/)")
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--compare", type=Path, help="another checkout to time beside this one")
    ap.add_argument("--step-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    demo, rate = sf.read(str(DEMO), dtype="float32")
    audio = np.tile(demo, 2)[: 16000 * 10]  # 10 s of speech
    if args.step_only:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["VCAM_TALKER_CACHE"] = tmp
            print(json.dumps({str(n): bench_render_step(n, args.frames, audio)["step_ms_p50"] for n in (512, 256)}))
        return
    settings = cpu_settings()
    print("  ".join(f"{k}={v}" for k, v in settings.items()))

    rows = [("yardstick: bare cv2.remap 512x512 float maps, single thread", bare_remap_ms(), "ms")]
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
        rows.append(("render step 512 p50 / yardstick remap", steps[512]["step_ms_p50"] / rows[0][1], "x"))
        stages = stage_breakdown(512, args.frames, audio)
        rows += [(f"  512 stage (mean): {k}", v, "ms") for k, v in stages.items()]
        wav = Path(tmp) / "speech10s.wav"
        sf.write(str(wav), audio, 16000, subtype="PCM_16")
        res = render_file(config(512), wav, Path(tmp) / "out.mp4", progress=False)
        rows += [("offline render 10 s speech 512x512 25 fps, end to end", res.realtime_factor, "x real time"),
                 ("offline render wall", res.wall_s, "s"),
                 ("share of one core for live 25 fps at 512 (render step)", 25 / steps[512]["fps"] * 100, "%")]
    if args.compare:
        rows += compare(args.compare, args.frames)
    report("bench_classic", rows, extra={"settings": settings}, out=args.json)


if __name__ == "__main__":
    main()
