"""The compiled / CUDA-graph generator path (issue 10) gives the eager frames.

On a CUDA device: the parity fixture's generator (reduced widths, shipped weights) through
``FrameStage`` eager and compiled (``default`` and ``reduce-overhead``, i.e. CUDA graphs),
float32 with TF32 off, on the fixture's own keypoints, batch 1 and a catch-up batch of 4:
predictions within 1e-4 (inductor fuses and reorders float32 sums; the fixture's own
thread-count tolerance is 2.3e-5). Skipped without CUDA: the CPU path is eager, and CPU
inductor builds would take minutes on this project's test machines.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vcam_talker.engines.sadtalker.engine import FrameStage

from .parity_build import fixture_stages
from .weight_rule import PARITY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device: compiled/CUDA-graph paths are a GPU feature")


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_generator_matches_eager(mode):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    stages = fixture_stages()
    dev = torch.device("cuda")
    gen = stages.source.generator.to(dev)
    i, o = np.load(PARITY / "inputs.npz"), np.load(PARITY / "outputs.npz")
    with torch.inference_mode():
        feat = gen.encode_source(torch.from_numpy(i["source_image"]).to(dev))
        comp = gen.compress_source(feat)
    kp_s = torch.from_numpy(o["kp_source"]).to(dev)
    kp_d = torch.from_numpy(o["kp_driving"]).to(dev)
    kp_d4 = kp_d.expand(4, -1, -1) + 0.01 * torch.arange(4, device=dev).view(4, 1, 1)
    eager, compiled = FrameStage(gen, torch.float32), FrameStage(gen, torch.float32, mode)
    for kd in (kp_d, kp_d4):
        with torch.inference_mode():
            want = eager(feat, comp, kp_s, kd)["prediction"]
            for _ in range(3):  # the first calls compile and record the graph
                got = compiled(feat, comp, kp_s, kd)["prediction"]
        d = (got - want).abs()
        print(f"{mode} batch {len(kd)}: max {d.max().item():.3g}, mean {d.mean().item():.3g}")
        assert d.max().item() <= 1e-4
