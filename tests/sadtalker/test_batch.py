"""Catch-up in batches (issue 10): ``render_batch`` gives the frames ``render`` gives, one by
one, in float32.

Engines on reduced-width weights in the official layout (reduced_weights.py), preprocess
'full' so the paste-back is in the path too. What is compared:

- the float predictions before rounding, with oneDNN off (plain float32 convolutions, whose
  arithmetic does not depend on the batch size): the generator on the same keypoints within
  1e-5 (measured: identical); MappingNet's GEMMs still sum in a batch-size-dependent order,
  which moves the keypoints (~50 in magnitude on these random weights) by float32 rounding
  (relative 1e-6) and the whole chain by ~1e-5 (bounded at 5e-5, mean 1e-6). With oneDNN on
  (the production CPU path) the convolutions also choose kernels by batch size: chain
  ~2e-5 (mean ~1e-6), bounded at 1e-4 (mean 1e-5);
- the uint8 frames of two engines fed the same windows, one frame at a time and in batches
  of mixed sizes: at most one level apart, on under 0.5% of the pixels (rounding of the
  above), and equal in count and order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vcam_talker.engines.sadtalker.batch import predictions
from vcam_talker.engines.sadtalker.engine import SadTalkerEngine
from vcam_talker.selfcheck import measure
from vcam_talker.stream.windows import ArrayAudio, Windower

from .official_weights import sadtalker_config

AVATAR = Path(__file__).resolve().parents[2] / "avatars" / "default.png"


@pytest.fixture(scope="module")
def reduced_dir(tmp_path_factory):
    from .reduced_weights import write_reduced_weights

    return write_reduced_weights(tmp_path_factory.mktemp("reduced_weights"))


def make_engine(reduced_dir, fps: int = 25) -> SadTalkerEngine:
    cfg = sadtalker_config(weights_dir=str(reduced_dir), preprocess="full", device="cpu", warmup_frames=0)
    cfg.video.fps = fps
    return SadTalkerEngine(cfg)


@pytest.fixture(scope="module")
def setup(reduced_dir, tmp_path_factory, speech_wav):
    mp = pytest.MonkeyPatch()
    mp.setenv("VCAM_TALKER_CACHE", str(tmp_path_factory.mktemp("cache")))
    single, batched = make_engine(reduced_dir), make_engine(reduced_dir)
    avatar = single.prepare(AVATAR)
    wav, rate = sf.read(speech_wav, dtype="float32")
    yield single, batched, avatar, wav
    mp.undo()


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # printed by mkldnn.flags
def test_batched_predictions_match_single_frames(setup):
    engine, _, avatar, wav = setup
    ctx, s = engine.context(avatar), engine.stages
    win = Windower(ArrayAudio(wav, 16000), engine.window_spec, 25)
    engine.reset()
    semantics = np.stack([engine.coefficient_window(win.window(k), ctx.coeffs)[1] for k in range(20, 32)])
    windows = torch.from_numpy(semantics)
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        # keypoints: MappingNet's GEMMs sum in a batch-size-dependent order: float32 rounding
        kp_one = torch.cat([s.motion(w[None], ctx.kp_canonical) for w in windows])
        kp_many = s.motion(windows, ctx.kp_canonical)
        d_kp = ((kp_one - kp_many).abs().max() / kp_many.abs().max()).item()
        # the generator on the same keypoints: plain float32 convolutions are batch-invariant
        gen = [s.frame(ctx.feature_3d, ctx.compressed, ctx.kp_source, kp_many[i : i + 1])
               for i in range(len(windows))]
        d_gen = (torch.cat(gen) - s.frame(ctx.feature_3d, ctx.compressed, ctx.kp_source, kp_many)).abs()
        d_chain = (torch.cat([predictions(engine, x[None], ctx) for x in semantics])
                   - predictions(engine, semantics, ctx)).abs()
    print(f"oneDNN off: keypoints rel {d_kp:.3g}; generator max {d_gen.max():.3g}; "
          f"chain max {d_chain.max():.3g}, mean {d_chain.mean():.3g}")
    assert d_kp <= 1e-6 and d_gen.max() <= 1e-5 and d_chain.max() <= 5e-5 and d_chain.mean() <= 1e-6
    one = torch.cat([predictions(engine, x[None], ctx) for x in semantics])
    many = predictions(engine, semantics, ctx)
    d = (one - many).abs()
    print(f"oneDNN on: chain max {d.max():.3g}, mean {d.mean():.3g}")
    assert d.max() <= 1e-4 and d.mean() <= 1e-5


def test_batched_frames_equal_single_frames_in_order(setup):
    single, batched, avatar, wav = setup
    single.reset()
    batched.reset()
    win = Windower(ArrayAudio(wav, 16000), single.window_spec, 25)
    idx = list(range(30, 45))
    want = [single.render(win.window(k), avatar) for k in idx]
    got, k = [], 0
    for n in (1, 4, 3, 6, 1):  # mixed sizes: the timeline carries on across batches
        got += batched.render_batch([win.window(j) for j in idx[k : k + n]], avatar)
        k += n
    assert len(got) == len(want)
    worst, share = 0, 0.0
    for a, b in zip(want, got):
        d = np.abs(a.astype(int) - b)
        worst, share = max(worst, int(d.max())), max(share, float((d > 0).mean()))
    print(f"uint8: max level diff {worst}, largest share of differing pixels {share:.2%}")
    assert worst <= 1 and share < 0.005
    # consecutive frames differ (speech): a reordering or a repeat would show as a large diff
    moving = [i for i in range(len(want) - 1) if np.abs(want[i].astype(int) - want[i + 1]).max() > 1]
    assert len(moving) > len(want) // 2
    assert all(np.abs(got[i].astype(int) - want[i + 1]).max() > 1 for i in moving)


def test_video_above_25_fps_repeats_coefficient_frames_as_render_does(reduced_dir, setup):
    _, _, avatar, wav = setup
    single, batched = make_engine(reduced_dir, fps=50), make_engine(reduced_dir, fps=50)
    win = Windower(ArrayAudio(wav, 16000), single.window_spec, 50)
    idx = list(range(60, 68))
    want = [single.render(win.window(k), avatar) for k in idx]
    got = batched.render_batch([win.window(k) for k in idx[:3]], avatar)
    got += batched.render_batch([win.window(k) for k in idx[3:]], avatar)
    same_w = [np.array_equal(want[i], want[i + 1]) for i in range(len(idx) - 1)]
    same_g = [got[i] is got[i + 1] or np.array_equal(got[i], got[i + 1]) for i in range(len(idx) - 1)]
    assert same_w == same_g and any(same_w)  # the same repeats, across the batch boundary too
    assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(want, got))


def test_selfcheck_through_the_sadtalker_engine(setup):
    """The start-up self-check renders through the real engine and leaves no motion state."""
    engine, _, avatar, _ = setup
    check = measure(engine, avatar, fps=25, seconds=0.3)
    assert check.engine == "sadtalker" and check.size == "128²" and check.device == "cpu"
    assert check.frames >= 1 and check.fps_sustained > 0 and check.ms_p50 > 0
    assert check.ok == (check.fps_sustained >= 25) and (check.suggestion is None) == check.ok
    assert engine.timeline.origin is None and engine._last is None  # reset: the live stream starts clean
