"""SadTalker engine speed: weight load, avatar prepare, per-frame render (ms, fps).

    .venv/bin/python benchmarks/bench_sadtalker.py [--quick] [--frames N] [--json PATH]
        [--half] [--compile] [--sizes 256,512] [--faces FILE.npz | --record-faces FILE.npz]

Official widths with random weights (written in the official file layout and read back
through the engine's loader), on whatever device ``engine.sadtalker.device: auto`` picks,
float32; plus the reduced-width parity fixture (../shared/fixtures/sadtalker_parity).
--quick: size 256 only, 3 frames. --half adds float16 rows measured in the same run
(CUDA only). A GPU host without dlib can replay the default avatar's detected faces
recorded here with --record-faces: detection is not what this benchmark measures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import wave

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import report  # noqa: E402
from vcam_talker import config as C  # noqa: E402
from vcam_talker.engines.sadtalker.audio2exp import Audio2Exp  # noqa: E402
from vcam_talker.engines.sadtalker.audio2pose import Audio2Pose  # noqa: E402
from vcam_talker.engines.sadtalker.audio_hparams import AudioHParams  # noqa: E402
from vcam_talker.engines.sadtalker.engine import (  # noqa: E402
    SadTalkerEngine,
    WeightLayout,
    load_stages,
    resolve_device,
)
from vcam_talker.engines.sadtalker.face_recon import FaceReconNet  # noqa: E402
from vcam_talker.engines.sadtalker.generator import OcclusionAwareSPADEGenerator  # noqa: E402
from vcam_talker.engines.sadtalker.hparams import SadTalkerHParams  # noqa: E402
from vcam_talker.engines.sadtalker.keypoints import KPDetector  # noqa: E402
from vcam_talker.engines.sadtalker.mapping import MappingNet  # noqa: E402
from vcam_talker.stream.windows import ArrayAudio, Windower  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "vcam_talker" / "data" / "demo_speech.wav"
PARITY = ROOT.parent / "shared" / "fixtures" / "sadtalker_parity"


def replay_faces(path: Path) -> None:
    """Use faces recorded by --record-faces instead of running a detector (GPU hosts
    without dlib)."""
    from vcam_talker.avatar import landmarks, prepare
    from vcam_talker.avatar.landmarks import Face

    rec = np.load(path)

    class Replayed:
        method = "replay"

        def __init__(self, *a, **kw):
            pass

        def detect(self, rgb, upsample=1):
            assert rgb.shape == tuple(rec["shape"]), "recorded faces belong to another image"
            return [Face(tuple(b), float(sc), lm) for b, sc, lm in zip(rec["boxes"], rec["scores"], rec["landmarks"])]

    landmarks.LandmarkDetector = prepare.LandmarkDetector = Replayed


def record_faces(path: Path) -> None:
    from PIL import Image

    from vcam_talker.avatar.landmarks import LandmarkDetector

    rgb = np.asarray(Image.open(C.DEFAULT_AVATAR).convert("RGB"))
    faces = LandmarkDetector("dlib").detect(rgb)
    np.savez(path, shape=np.array(rgb.shape), boxes=np.array([f.box for f in faces]),
             scores=np.array([f.score for f in faces]), landmarks=np.array([f.landmarks for f in faces]))
    print(f"recorded {len(faces)} faces of {C.DEFAULT_AVATAR} to {path}")


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getsampwidth() == 2 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def write_random_weights(directory: Path, size: int = 256) -> WeightLayout:
    """Official-width modules with torch's default init, saved as the official files."""
    torch.manual_seed(0)
    state = {}
    for prefix, module in (("kp_extractor.", KPDetector()), ("generator.", OcclusionAwareSPADEGenerator()),
                           ("audio2exp.", Audio2Exp()), ("audio2pose.", Audio2Pose()),
                           ("face_3drecon.", FaceReconNet())):
        sd = module.state_dict()
        for k, v in sd.items():
            if k.endswith("running_var"):
                v = v.uniform_(0.75, 1.25)
            state[prefix + k] = v.contiguous()
    combined = directory / f"SadTalker_V0.0.2_{size}.safetensors"
    save_file(state, str(combined))
    mapping = directory / "mapping_00229-model.pth.tar"
    torch.save({"mapping": MappingNet().state_dict()}, mapping)
    return WeightLayout(combined, mapping)


def config(**st) -> C.Config:
    d = C.to_dict(C.Config())
    d["engine"]["name"] = "sadtalker"
    d["engine"]["sadtalker"].update(st)
    return C.from_dict(d)


STAGES = ("audio2exp", "audio2pose", "mapping", "keypoint transform", "generator", "paste-back")


class _Timed:
    """Wraps a callable; adds its wall time (after a device sync) to ``acc[name]``."""

    def __init__(self, fn, name: str, acc: dict, sync) -> None:
        self.fn, self.name, self.acc, self.sync = fn, name, acc, sync

    def __call__(self, *a, **kw):
        t = time.perf_counter()
        out = self.fn(*a, **kw)
        self.sync()
        self.acc[self.name] += time.perf_counter() - t
        return out

    def __getattr__(self, name):
        return getattr(self.fn, name)


def time_render(engine: SadTalkerEngine, av, audio: np.ndarray, frames: int, first: int = 25) -> dict:
    """Pass 1 times whole render() calls (frames first+1 .. first+frames, after one warm-up).
    Pass 2 renders the same frames again with each stage wrapped (a device sync after
    each), for the split; the mel windows and the rest are what the stages leave over."""
    spec = engine.window_spec
    win = Windower(ArrayAudio(audio, spec.sample_rate), spec, engine.config.video.fps)
    sync = (lambda: _sync(engine))
    acc = dict.fromkeys(STAGES + ("motion",), 0.0)

    def run() -> list[float]:
        engine.reset()
        engine.render(win.window(first), av)  # warm-up (the first ingest fills the lookahead)
        acc.update(dict.fromkeys(acc, 0.0))
        times = []
        for i in range(first + 1, first + 1 + frames):
            t0 = time.perf_counter()
            engine.render(win.window(i), av)
            sync()
            times.append(time.perf_counter() - t0)
        return times

    total = run()
    st, audio_stage = engine.stages, engine.stages.audio
    saved = (st.motion, st.frame, dict(vars(audio_stage)), engine.compose)
    for attr, name in (("exp_embed", "audio2exp"), ("exp_head", "audio2exp"), ("pose_embed", "audio2pose"),
                       ("pose_decode", "audio2pose")):
        setattr(audio_stage, attr, _Timed(getattr(audio_stage, attr), name, acc, sync))
    motion = st.motion
    motion.mapping = _Timed(motion.mapping, "mapping", acc, sync)
    st.motion = _Timed(motion, "motion", acc, sync)
    st.frame = _Timed(st.frame, "generator", acc, sync)
    engine.compose = _Timed(engine.compose, "paste-back", acc, sync)
    try:
        split_total = sum(run())
    finally:
        motion.mapping = motion.mapping.fn
        st.motion, st.frame = saved[0], saved[1]
        vars(audio_stage).clear()
        vars(audio_stage).update(saved[2])
        del engine.compose
    acc["keypoint transform"] = acc.pop("motion") - acc["mapping"]
    acc["mel windows and the rest"] = split_total - sum(acc.values())
    out = {"ms_p50": 1e3 * statistics.median(total), "fps": 1.0 / statistics.mean(total)}
    out.update({f"{k}_ms": 1e3 * v / frames for k, v in acc.items()})
    return out


def _sync(engine: SadTalkerEngine) -> None:
    if engine.stages.device.type == "cuda":
        torch.cuda.synchronize()


def bench_full(size: int, frames: int, audio: np.ndarray, tmp: Path, device: torch.device,
               half: bool = False, compile: bool = False) -> tuple[list, dict]:
    label = f"{size} {'fp16' if half else 'fp32'}{' compiled' if compile else ''}"
    t = time.perf_counter()
    layout = write_random_weights(tmp, size)
    t_write = time.perf_counter() - t
    t = time.perf_counter()
    stages = load_stages(layout, device=device, half=half, compile=compile)
    t_load = time.perf_counter() - t
    engine = SadTalkerEngine(config(preprocess="crop", device=device.type, size=size, half=half, compile=compile),
                             stages=stages)
    t = time.perf_counter()
    av = engine.prepare(C.DEFAULT_AVATAR)
    t_prep = time.perf_counter() - t
    r = time_render(engine, av, audio, frames)
    rows = [
        (f"official widths {label}: write random weights", t_write, "s"),
        (f"official widths {label}: load checkpoints", t_load, "s"),
        (f"official widths {label}: prepare avatar (cold)", t_prep, "s"),
        (f"official widths {label}: render p50", r["ms_p50"], "ms"),
        (f"official widths {label}: render", r["fps"], "fps"),
    ] + [(f"official widths {label}: {k}", r[f"{k}_ms"], "ms/frame")
         for k in STAGES + ("mel windows and the rest",)] + [
        (f"official widths {label}: real-time factor at 25 fps", r["fps"] / 25, "x"),
    ]
    engine.close()
    return rows, r


def bench_fixture(frames: int, audio: np.ndarray, device: torch.device) -> list:
    doc = yaml.safe_load((PARITY / "config.yaml").read_text())
    w = PARITY / "weights.safetensors"
    stages = load_stages(WeightLayout(w, w, mapping_entry=None, mapping_prefix="mapping.", face_recon=False),
                         SadTalkerHParams.from_yaml_dict(doc).render, AudioHParams.from_yaml_dict(doc), device=device)
    inputs = np.load(PARITY / "inputs.npz")
    engine = SadTalkerEngine(config(device=device.type), stages=stages)
    # a prepared avatar from the fixture's source (no face_3drecon in the reduced weights)
    from vcam_talker.avatar import PreparedAvatar
    from vcam_talker.engines.sadtalker.timeline import SourceCoeffs

    with torch.inference_mode():
        enc = stages.source.encode(torch.from_numpy(inputs["source_image"]))
        src = SourceCoeffs.from_row(inputs["source_coeff_3dmm"][0], False)
        kp_s = stages.motion(torch.from_numpy(src.source_window())[None], enc["kp_canonical"])
    data = {k: v[0].cpu().numpy() for k, v in enc.items()}
    data.update(coeff=inputs["source_coeff_3dmm"][0], kp_source=kp_s[0].cpu().numpy(),
                box=np.array([0.0, 0.0, 256.0, 256.0]), framing=np.array([[2.0, 0, 0], [0, 2.0, 0]]),
                paste_box=np.array([0, 0, 512, 512]))
    img = np.zeros((512, 512, 3), np.uint8)
    av = PreparedAvatar(image=img, landmarks=np.zeros((68, 2), np.float32), face_box=(0, 0, 1, 1),
                        engine="sadtalker", sha256="", data=data)
    r = time_render(engine, av, audio, frames)
    return [("reduced fixture widths 256: render p50", r["ms_p50"], "ms"),
            ("reduced fixture widths 256: render", r["fps"], "fps"),
            ("reduced fixture widths 256: generator", r["generator_ms"], "ms")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="where to write results (default benchmarks/results/)")
    ap.add_argument("--frames", type=int, default=None, help="frames timed per variant")
    ap.add_argument("--quick", action="store_true", help="3 frames, fewer variants")
    ap.add_argument("--sizes", default="256", help="comma-separated render sizes (256, 512)")
    ap.add_argument("--half", action="store_true", help="also time float16 (CUDA only), side by side")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd generators, side by side")
    ap.add_argument("--faces", type=Path, help="replay faces recorded with --record-faces (no dlib needed)")
    ap.add_argument("--record-faces", type=Path, help="detect the default avatar's faces, save them, exit")
    args = ap.parse_args()
    if args.record_faces:
        record_faces(args.record_faces)
        return
    if args.faces:
        replay_faces(args.faces)
    frames = args.frames or (3 if args.quick else 10)
    device = resolve_device("auto")
    audio = np.tile(read_wav(DEMO), 3)
    rows: list = []
    sizes = [256] if args.quick else [int(v) for v in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VCAM_TALKER_CACHE"] = str(Path(tmp) / "cache")
        for size in sizes:
            variants = [(h, c) for h in ([False, True] if args.half and device.type == "cuda" else [False])
                        for c in ([False, True] if args.compile else [False])]
            for half, compiled in variants:
                d = Path(tmp) / f"w{size}{int(half)}{int(compiled)}"
                d.mkdir()
                full_rows, _ = bench_full(size, frames, audio, d, device, half, compiled)
                rows += full_rows
                for f in d.iterdir():  # 725 MB each: do not keep them around
                    f.unlink()
        if PARITY.is_dir():
            rows += bench_fixture(max(frames, 10), audio, device)
    extra = {"device": str(device), "torch_threads": torch.get_num_threads(), "frames": frames,
             "quick": args.quick, "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    report("bench_sadtalker", rows, extra=extra, out=args.json)


if __name__ == "__main__":
    main()
