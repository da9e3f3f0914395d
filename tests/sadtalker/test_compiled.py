"""The compiled generator path gives the eager frames, called from a second thread as the
daemon calls it (the engine's torch thread, :mod:`vcam_talker.engines.sadtalker.owner`).

The parity fixture's generator (reduced widths, shipped weights) through ``FrameStage``
eager and compiled, float32 (TF32 off on CUDA), on the fixture's own keypoints: batch 1
(the first driving frame) and a catch-up batch of 4 (the first four). Tolerance: the fixture's end-to-end frame tolerance
(sadtalker_parity/README.md), on predictions in 0..1: max 1e-2, mean 1e-4. Inductor fuses and
reorders float32 sums; almost every pixel moves by under 1e-6, but the dense-motion mask cut
(weights under a threshold zeroed) flips where a weight sits at the threshold, and such a
pixel moves by ~1e-3 (measured on the CPU: max 3.2e-3, mean 3e-6). Inductor ``mode="default"`` runs on the CPU too; only the
CUDA-graph mode (``reduce-overhead``) needs CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from vcam_talker.engines.sadtalker.engine import FrameStage
from vcam_talker.engines.sadtalker.owner import TorchThread

from .parity_build import fixture_stages
from .weight_rule import PARITY

TOL_MAX, TOL_MEAN = 1e-2, 1e-4

CASES = [("cpu", "default"), ("cuda", "default"), ("cuda", "reduce-overhead")]


@pytest.mark.parametrize("device,mode", CASES)
def test_compiled_generator_matches_eager(device, mode):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(device)
    stages = fixture_stages()
    gen = stages.source.generator.to(dev)
    i, o = np.load(PARITY / "inputs.npz"), np.load(PARITY / "outputs.npz")
    with torch.inference_mode():
        feat = gen.encode_source(torch.from_numpy(i["source_image"]).to(dev))
        comp = gen.compress_source(feat)
    kp_s = torch.from_numpy(o["kp_source"]).to(dev).reshape(1, -1, 3)
    kp_all = torch.from_numpy(o["kp_driving"]).to(dev)  # (frames, K, 3)
    assert kp_all.dim() == 3 and len(kp_all) >= 4
    batches = (kp_all[:1], kp_all[:4])
    eager, compiled = FrameStage(gen, torch.float32), FrameStage(gen, torch.float32, mode)
    owner = TorchThread(dev, name="test-torch")
    frames_before = counters["stats"]["unique_graphs"]

    def compiled_frames(kd):
        with torch.inference_mode():
            for _ in range(3):  # the first calls compile (and record the CUDA graph)
                got = compiled(feat, comp, kp_s, kd).clone()  # read before the next replay
            return got

    try:
        for kd in batches:
            with torch.inference_mode():
                want = eager(feat, comp, kp_s, kd)
            got = owner.call(compiled_frames, kd)
            assert got.shape == (len(kd), 3, *want.shape[2:])
            d = (got - want).abs()
            print(f"{device} {mode} batch {len(kd)}: max {d.max().item():.3g}, mean {d.mean().item():.3g}")
            assert d.max().item() <= TOL_MAX and d.mean().item() <= TOL_MEAN
    finally:
        owner.close()
    # it ran compiled: dynamo made a graph for each batch size (not an eager fallback)
    assert counters["stats"]["unique_graphs"] - frames_before >= 2
