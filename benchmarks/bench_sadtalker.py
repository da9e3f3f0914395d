"""SadTalker per-frame speed (issue 10): one table, one run.

    .venv/bin/python benchmarks/bench_sadtalker.py [--frames N] [--sizes 256,512] [--batch 4]
        [--compile-cpu] [--json PATH]

Rows, per face size (official widths, torch's default init: speed does not depend on the
weights), each with per-stage ms/frame and fps:

- ``baseline``: plain per-frame float32, written out here as its own simple path over the
  same networks: batch 1, no precompute reuse (the source is encoded every frame, the
  coefficient rows are recomputed every frame), no compile, every stage's output copied to
  the host and back;
- ``engine``: the production path (cached source volume and coefficient rows, uint8 on the
  device, one host copy), batch 1, float32, eager; then each switch alone on top of it:
  ``batch N`` (catch-up), ``channels_last``, ``bfloat16``, ``float16``, ``tf32``, ``compile``
  and ``compile reduce-overhead``; and ``all``: every switch that runs on this device.
  Rows that need CUDA print "not measured (no CUDA)". CPU compile (inductor builds C++ for
  minutes) runs only with --compile-cpu.

Then the precision deviations from float32 (pixels, 0..255, max / mean), through the
engine's per-frame path (source encoded in the precision, volume kept float32, FrameStage):
the generator at official widths with the weights of the fixtures' sadtalker/ (the weight
rule) on its inputs, and the reduced-width generator of sadtalker_long on every generator
frame of its clips. Every row starts from a fresh float32 copy of the weights, folded and
cast as the loader does (float32 islands: mask conv and softmax, norm statistics, output
conv; the keypoint nets stay float32); TF32 is off for the reference and the half rows, on
for the tf32 row. Fixtures: ../shared/fixtures, else shared/fixtures in the tree (the GPU
check's copy: scripts/prepare_device_tree.sh). $OUT set (benchmarks/gpu_check.sh): the JSON goes there too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import RESULTS, machine  # noqa: E402
from benchmarks.sadtalker_precision import deviations  # noqa: E402
from vcam_talker import config as C  # noqa: E402
from vcam_talker.avatar import PreparedAvatar  # noqa: E402
from vcam_talker.engines.sadtalker.accel import resolve_precision, use_channels_last  # noqa: E402
from vcam_talker.engines.sadtalker.audio2exp import Audio2Exp  # noqa: E402
from vcam_talker.engines.sadtalker.audio2pose import Audio2Pose  # noqa: E402
from vcam_talker.engines.sadtalker.audio_hparams import AudioHParams  # noqa: E402
from vcam_talker.engines.sadtalker.batch import to_uint8  # noqa: E402
from vcam_talker.engines.sadtalker.engine import (  # noqa: E402
    AudioStage, FrameStage, MotionStage, SadTalkerEngine, SourceStage, Stages)
from vcam_talker.engines.sadtalker.stages import prepare_generator  # noqa: E402
from vcam_talker.engines.sadtalker.generator import OcclusionAwareSPADEGenerator  # noqa: E402
from vcam_talker.engines.sadtalker.hparams import RenderHParams  # noqa: E402
from vcam_talker.engines.sadtalker.keypoints import HeadMotion, KPDetector, transform_keypoints  # noqa: E402
from vcam_talker.engines.sadtalker.mapping import MappingNet  # noqa: E402
from vcam_talker.engines.sadtalker.presets import coeff_frame  # noqa: E402
from vcam_talker.engines.sadtalker.audio2pose import SEMANTIC_RADIUS  # noqa: E402
from vcam_talker.stream.windows import ArrayAudio, Windower  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
try:  # the GPU check's tree carries no opencv wheel: the paste-back (CPU) is not timed there
    import cv2  # noqa: F401

    HAVE_CV2 = True
except ImportError:
    HAVE_CV2 = False
# the checkout's ../shared, or shared/ inside the tree (a copied working tree)
DEMO = ROOT / "vcam_talker" / "data" / "demo_speech.wav"
PARTS = ("timeline", "mapping+keypoints", "generator", "to host", "paste-back")
CUDA_ONLY = {"float16", "tf32", "compile reduce-overhead"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(size: int, device: torch.device, variant: set[str]) -> Stages:
    """Official-width stages in memory; the variant's switches applied as the engine's loader does."""
    torch.manual_seed(0)
    hp, ahp = RenderHParams(), AudioHParams()
    dtype = resolve_precision(next((p for p in ("bfloat16", "float16", "tf32") if p in variant), "float32"), device)
    kp, gen, mapping = KPDetector(hp.kp_detector, hp.common), OcclusionAwareSPADEGenerator(hp.generator, hp.common), MappingNet(hp.mapping_full)
    a2e, a2p = Audio2Exp(ahp.audio2exp), Audio2Pose(ahp.audio2pose)
    for m in (kp, mapping, a2e, a2p):
        m.eval().to(device)
    prepare_generator(gen.eval(), device, dtype)  # as the loader: folded, cast, float32 islands
    if "channels_last" in variant:
        use_channels_last(gen)
    mode = "reduce-overhead" if "compile reduce-overhead" in variant else ("default" if "compile" in variant else False)
    return Stages(audio=AudioStage(a2e, a2p, device), source=SourceStage(kp, gen, None, device, dtype),
                  motion=MotionStage(mapping, device), frame=FrameStage(gen, dtype, mode), render_hp=hp,
                  audio_hp=ahp, full=True, device=device, dtype=dtype)


def avatar(stages: Stages, size: int) -> tuple[PreparedAvatar, torch.Tensor]:
    """A prepared avatar from a synthetic source image ('full' mode: pasted into a 512² photo)."""
    g = torch.Generator().manual_seed(1)
    src = torch.rand(1, 3, size, size, generator=g)
    coeff = np.concatenate([np.zeros(64), [0.1, -0.05, 0.02, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).astype(np.float32)
    with torch.inference_mode():
        enc = stages.source.encode(src)
        win = np.repeat(coeff[:, None], 2 * SEMANTIC_RADIUS + 1, 1)[None]
        kp_s = stages.motion(torch.from_numpy(win), enc["kp_canonical"])
    data = {k: v[0].float().cpu().numpy() for k, v in enc.items()}
    data.update(coeff=coeff, kp_source=kp_s[0].cpu().numpy(), box=np.array([128.0, 96.0, 384.0, 352.0]),
                framing=np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    img = np.random.default_rng(2).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    av = PreparedAvatar(image=img, landmarks=np.zeros((68, 2), np.float32), face_box=(128, 96, 384, 352),
                        engine="sadtalker", sha256="", data=data)
    return av, src


def engine_for(stages: Stages, size: int) -> SadTalkerEngine:
    d = C.to_dict(C.Config())
    d["engine"]["name"] = "sadtalker"
    # the config takes 256 or 512; a tiny size (--dry-run's 128) runs on stages built for it
    d["engine"]["sadtalker"].update(size=size if size in (256, 512) else 256, preprocess="full", warmup_frames=0)
    engine = SadTalkerEngine(C.from_dict(d), stages=stages)
    engine.size = size
    return engine


def timer(device: torch.device):
    """Wall time on CUDA; on a CPU the process's CPU time (all threads), which a machine
    shared with other work does not inflate the way it inflates wall time."""
    return time.perf_counter if device.type == "cuda" else time.process_time


class Clock:
    def __init__(self, device):
        self.device, self.acc, self.now = device, dict.fromkeys(PARTS, 0.0), timer(device)

    def __call__(self, part: str, t0: float) -> float:
        sync(self.device)
        t = self.now()
        self.acc[part] += t - t0
        return t


def uncached_window(engine: SadTalkerEngine, window, source) -> np.ndarray:
    """The timeline's window with every row recomputed (what window() did before its row cache)."""
    tl = engine.timeline
    centre = int(round(window.t * window.sample_rate))
    tl.set_source(source)
    tl.ingest(window.samples, centre - engine.window_spec.before, window.end)
    k = tl.clip_frame(coeff_frame(window.t))
    top = min(tl.frames_ready - 1, k + tl.p.lookahead)
    rows = np.maximum(np.clip(np.arange(k - SEMANTIC_RADIUS, k + SEMANTIC_RADIUS + 1), 0, top), tl._base)
    return np.ascontiguousarray(tl.coefficients(rows, source, np.maximum(rows - tl.p.pose_delay, 0)).T)


def baseline_frame(engine: SadTalkerEngine, window, av, src: torch.Tensor, clk: Clock) -> np.ndarray:
    """Plain per-frame float32: everything recomputed, a host round trip after every stage."""
    s, dev, ctx = engine.stages, engine.stages.device, engine.context(av)
    t = clk.now()
    semantic = uncached_window(engine, window, ctx.coeffs)
    t = clk("timeline", t)
    with torch.inference_mode():
        kp_c = s.source.kp_detector(src.to(dev)).cpu()  # no precompute reuse
        m = s.motion.mapping(torch.from_numpy(semantic)[None].to(dev))
        m = HeadMotion(**{f.name: getattr(m, f.name).cpu().to(dev) for f in fields(m)})
        kp_d = transform_keypoints(kp_c.to(dev), m).cpu()
        t = clk("mapping+keypoints", t)
        pred = s.source.generator(src.to(dev), ctx.kp_source.to(dev), kp_d.to(dev))["prediction"].cpu()
        t = clk("generator", t)
    face = (pred[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    t = clk("to host", t)
    if not HAVE_CV2:
        return face
    out = engine.compose(face, ctx)
    clk("paste-back", t)
    return out


def engine_frames(engine: SadTalkerEngine, windows: list, av, clk: Clock) -> list[np.ndarray]:
    """render_batch's steps (batch.render_batch), timed part by part."""
    s, ctx = engine.stages, engine.context(av)
    t = clk.now()
    sem = torch.stack([engine.device_window(w, ctx.coeffs)[1] for w in windows])
    t = clk("timeline", t)
    with torch.inference_mode():
        kp_d = s.motion(sem, ctx.kp_canonical)
        t = clk("mapping+keypoints", t)
        pred = s.frame(ctx.feature_3d, ctx.compressed, ctx.kp_source, kp_d)
        t = clk("generator", t)
    faces = to_uint8(pred)
    t = clk("to host", t)
    if not HAVE_CV2:
        return list(faces)
    out = [engine.compose(f, ctx) for f in faces]
    clk("paste-back", t)
    return out


def time_variant(size: int, device: torch.device, variant: set[str], frames: int, batch: int, audio) -> dict:
    stages = build(size, device, variant)
    engine = engine_for(stages, size)
    av, src = avatar(stages, size)
    win = Windower(ArrayAudio(audio, 16000), engine.window_spec, 25)
    n = batch if "batch" in variant else 1
    first = 30
    clk = Clock(device)
    calls = max(1, frames // n)
    warm = 1 if device.type == "cpu" and not variant & {"compile", "compile reduce-overhead"} else 3
    times, walls = [], []
    for rep in range(warm + calls):  # warm-up: stream start; compile, CUDA graphs, autotuning
        if rep == warm:
            clk.acc = dict.fromkeys(PARTS, 0.0)
        idx = list(range(first + rep * n, first + (rep + 1) * n))
        t0, w0 = clk.now(), time.perf_counter()
        if variant == {"baseline"}:
            baseline_frame(engine, win.window(idx[0]), av, src, clk)
        else:
            engine_frames(engine, [win.window(i) for i in idx], av, clk)
        if rep >= warm:
            times.append((clk.now() - t0) / n)
            walls.append((time.perf_counter() - w0) / n)
    done = calls * n
    out = {f"{p} ms": 1e3 * v / done for p, v in clk.acc.items()}
    out.update({"ms/frame": 1e3 * statistics.median(times), "fps": 1.0 / statistics.mean(walls), "frames": done})
    engine.close()
    return out


# --------------------------------------------------------------------------------------------


def variants(device: torch.device, batch: int, compile_cpu: bool) -> list[tuple[str, set[str]]]:
    cuda = device.type == "cuda"
    alone = [f"batch {batch}", "channels_last", "bfloat16", "float16", "tf32", "compile", "compile reduce-overhead"]
    out = [("baseline", {"baseline"}), ("engine (float32, batch 1)", set())]
    out += [(f"+ {name}", {"batch" if name.startswith("batch") else name}) for name in alone]
    every = {"batch", "channels_last", "float16" if cuda else "bfloat16"} | ({"compile reduce-overhead"} if cuda else set())
    if compile_cpu and not cuda:
        every.add("compile")
    out.append(("all: " + ", ".join(sorted(every)), every))
    return out


def runnable(v: set[str], device: torch.device, compile_cpu: bool) -> str | None:
    if device.type != "cuda" and v & CUDA_ONLY:
        return "not measured (no CUDA)"
    if device.type != "cuda" and "compile" in v and not compile_cpu:
        return "not measured (CPU inductor build: --compile-cpu)"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=4, help="frames timed per row (after warm-up)")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--batch", type=int, default=4, help="catch-up batch size")
    ap.add_argument("--compile-cpu", action="store_true", help="also time torch.compile on a CPU")
    ap.add_argument("--skip-deviations", action="store_true")
    ap.add_argument("--deviations-only", action="store_true", help="only the precision deviations")
    ap.add_argument("--deviation-size", type=int, default=0, help="resize the fixtures' source (0: 256²)")
    ap.add_argument("--deviation-frames", type=int, default=0, help="frames per fixture case (0: all)")
    ap.add_argument("--skip", default="", help="comma-separated words: rows whose name has one are not timed")
    ap.add_argument("--only", default="", help="comma-separated words, each optionally SIZE:word: time only "
                    "the rows whose name has one (e.g. 512:baseline,512:engine)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import soundfile as sf

    audio, _ = sf.read(DEMO, dtype="float32")
    audio = np.tile(audio, 3)
    results: dict = {}
    print(f"device {device}{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per frame: "
          f"{'wall' if device.type == 'cuda' else 'CPU time of all threads'}; fps: wall clock")
    head = f"{'size':>4}  {'variant':<44} {'fps':>7} {'ms/frame':>9} " + " ".join(f"{p:>17}" for p in PARTS)
    print(head)
    if not HAVE_CV2:
        print("      (no cv2 here: paste-back not measured, fps without it)")
    for size in (int(s) for s in args.sizes.split(",")):
        for name, v in variants(device, args.batch, args.compile_cpu):
            why = runnable(v, device, args.compile_cpu)
            words = [w.split(":")[-1] for w in args.only.split(",") if w and (":" not in w or w.startswith(f"{size}:"))]
            if not why and words and not any(w in name for w in words):
                why = "not measured in this run (--only)"
            skips = [w for w in args.skip.split(",") if w]
            if not why and (args.deviations_only or any(w in name for w in skips)):
                why = "not measured in this run (--skip)"
            if why:
                print(f"{size:>4}  {name:<44} {why}")
                results[f"{size} {name}"] = why
                continue
            try:
                r = time_variant(size, device, v, args.frames, args.batch, audio)
            except Exception as exc:  # a switch that fails here is a result too
                why = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
                print(f"{size:>4}  {name:<44} {why}")
                results[f"{size} {name}"] = why
                continue
            results[f"{size} {name}"] = r
            print(f"{size:>4}  {name:<44} {r['fps']:>7.2f} {r['ms/frame']:>9.1f} "
                  + " ".join(f"{r[p + ' ms']:>17.1f}" for p in PARTS), flush=True)
    if not args.skip_deviations:
        print("\nprecision vs float32 (the per-frame path; pixel deviation 0..255, max / mean):")
        for name, prec, val in deviations(device, args.deviation_size, args.deviation_frames):
            print(f"  {name:<50} {prec:<9} {val}")
            results[f"deviation {name} {prec}"] = val
    data = {"benchmark": "bench_sadtalker", "machine": machine(), "device": str(device),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "frames": args.frames, "results": results}
    outs = [args.json or RESULTS / "bench_sadtalker.json"]
    if os.environ.get("OUT"):
        outs.append(Path(os.environ["OUT"]) / "bench_sadtalker.json")
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
