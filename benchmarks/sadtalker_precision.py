"""The precision rows of benchmarks/bench_sadtalker.py: each precision's pixel deviation from
float32 (0..255, max / mean) through the engine's per-frame path, on the fixtures (see that
module's docstring)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from vcam_talker.engines.sadtalker.engine import FrameStage
from vcam_talker.engines.sadtalker.generator import OcclusionAwareSPADEGenerator
from vcam_talker.engines.sadtalker.hparams import SadTalkerHParams
from vcam_talker.engines.sadtalker.stages import prepare_generator

ROOT = Path(__file__).resolve().parents[1]
# the checkout's ../shared, else shared/ inside the tree (the GPU check's copy)
FIXTURES = next((d for d in (ROOT.parent / "shared" / "fixtures", ROOT / "shared" / "fixtures") if d.is_dir()),
                ROOT.parent / "shared" / "fixtures")

_STATES: dict[Path, dict[str, torch.Tensor]] = {}


def _generator(folder: Path, rule: bool) -> OcclusionAwareSPADEGenerator:
    """A new float32 generator with the fixture's weights (load_state_dict copies them)."""
    hp = SadTalkerHParams.from_yaml_dict(yaml.safe_load((folder / "config.yaml").read_text())).render
    gen = OcclusionAwareSPADEGenerator(hp.generator, hp.common)
    if folder in _STATES:
        state = _STATES[folder]
    elif rule:  # ../shared/fixtures/sadtalker ships no weights: its rule builds them from keys.json
        from tests.sadtalker.weight_rule import rule_tensor

        keys = json.loads((folder / "keys.json").read_text())
        state = {k[len("generator."):]: torch.from_numpy(rule_tensor(k, v["shape"]))
                 for k, v in keys.items() if k.startswith("generator.")}
    else:
        from safetensors.torch import load_file

        state = {k[len("generator."):]: v for k, v in load_file(str(folder / "weights.safetensors")).items()
                 if k.startswith("generator.")}
    _STATES[folder] = state
    gen.load_state_dict(state, strict=True)
    return gen.eval()


PRECISIONS = ("bfloat16", "float16", "tf32")


def _tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def _frames(gen, device, dtype, image, kp_s, kp_d, size: int) -> torch.Tensor:
    """The engine's per-frame path on one generator: the source encoded in ``dtype`` and kept
    float32 (as the engine's avatar context), then FrameStage frame by frame. -> N×3×S×S, 0..255."""
    img = torch.from_numpy(image).to(device)
    if size and size != img.shape[-1]:
        img = torch.nn.functional.interpolate(img, size=(size, size), mode="area")
    frame = FrameStage(gen, dtype)
    with torch.inference_mode():
        feat = gen.encode_source(img.to(dtype))
        comp = gen.compress_source(feat).float()
        feat = feat.float()
        out = [frame(feat, comp, torch.from_numpy(a).to(device).view(1, -1, 3), torch.from_numpy(b).to(device).view(1, -1, 3))
               .float().cpu() for a, b in zip(kp_s, kp_d)]
    return torch.cat(out) * 255


def deviations(device: torch.device, size: int = 0, max_frames: int = 0) -> list[tuple[str, str, str]]:
    """(fixture, precision, 'max / mean' pixel deviation from float32, 0..255) rows.

    Each row starts from a fresh float32 copy of the weights (folded, then cast with the
    float32 islands, as the loader does); TF32 is off for the float32 reference and for the
    half rows, on only for the tf32 row. size: resize the fixture's source image (0: its own
    256²); max_frames: at most that many frames per case (0: all)."""
    cases = []
    full = FIXTURES / "sadtalker"
    if full.is_dir():
        i, o = np.load(full / "inputs.npz"), np.load(full / "outputs.npz")
        cases.append(("sadtalker (official widths) 256²", full, True, i["source_image"], o["kp_source"], o["kp_driving"]))
    for clip in ("clip_a", "clip_short"):
        d = FIXTURES / "sadtalker_long" / clip
        if d.is_dir():
            i, o = np.load(d / "inputs.npz"), np.load(d / "outputs.npz")
            kd = o["kp_driving"][i["generator_frames"]]
            cases.append((f"sadtalker_long {clip}", FIXTURES / "sadtalker_parity", False,
                          i["source_image"], np.repeat(o["kp_source"].reshape(1, -1, 3), len(kd), 0), kd))
    if not cases:
        return [("fixtures", "-", f"not measured (no fixtures under {FIXTURES})")]
    rows = []
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for name, folder, rule, image, kp_s, kp_d in cases:
            ks, kd = (np.asarray(k, np.float32).reshape(-1, *np.shape(k)[-2:]) for k in (kp_s, kp_d))
            if max_frames:
                ks, kd = ks[:max_frames], kd[:max_frames]
            name = f"{name}, {len(kd)} frame{'s' if len(kd) > 1 else ''}" + (f" at {size}²" if size else "")
            _tf32(False)
            gen = _generator(folder, rule)
            prepare_generator(gen, device, torch.float32)
            ref = _frames(gen, device, torch.float32, image, ks, kd, size)
            del gen
            for prec in PRECISIONS:
                if prec in ("float16", "tf32") and device.type != "cuda":
                    rows.append((name, prec, "not measured (no CUDA)"))
                    continue
                _tf32(prec == "tf32")
                gen = _generator(folder, rule)  # a fresh float32 copy for every row
                dt = torch.float32 if prec == "tf32" else getattr(torch, prec)
                prepare_generator(gen, device, dt)
                d = (_frames(gen, device, dt, image, ks, kd, size) - ref).abs()
                rows.append((name, prec, f"{d.max():.2f} / {d.mean():.3f}"))
                del gen
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    return rows


