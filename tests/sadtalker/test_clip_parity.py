"""Whole clips through the production timeline, every frame, against the reference.

``../shared/fixtures/sadtalker_long/`` (207 frames: six pose chunks, the remainder chunk, blinks,
clamping at both ends; 20 frames: a padded pose chunk) and sadtalker_parity's 45-frame clip,
with the reference's recorded blink ratio and pose latents injected:

- the offline form (``clip_coefficients``, what ``vcam-talker render`` uses) reproduces every
  array of the chain, the mapping outputs and the driving keypoints of every frame, and the
  generator's frames (tolerances of the fixture README);
- the streaming form with the ``reference`` preset, fed window by window through the engine's
  own ``coefficient_window`` as the live path feeds it, reproduces every frame's window too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vcam_talker.engines.sadtalker.engine import SadTalkerEngine
from vcam_talker.engines.sadtalker.keypoints import transform_keypoints
from vcam_talker.engines.sadtalker.presets import TimelineParams
from vcam_talker.engines.sadtalker.randomness import reference_blinks
from vcam_talker.engines.sadtalker.timeline import CoefficientTimeline, SourceCoeffs, clip_coefficients
from vcam_talker.stream.windows import ArrayAudio, Windower

from .compare import assert_close as close
from .official_weights import sadtalker_config
from .parity_build import fixture_stages
from .weight_rule import PARITY

LONG = PARITY.parent / "sadtalker_long"
CLIPS = {
    "clip_a": (LONG / "clip_a" / "inputs.npz", LONG / "clip_a" / "outputs.npz"),
    "clip_short": (LONG / "clip_short" / "inputs.npz", LONG / "clip_short" / "outputs.npz"),
    "parity45": (PARITY / "inputs.npz", PARITY / "outputs.npz"),
}


@pytest.fixture(scope="module")
def stages():
    return fixture_stages()


@pytest.fixture(scope="module", params=list(CLIPS))
def clip(request):
    i, o = (np.load(p) for p in CLIPS[request.param])
    return request.param, i, o


def source_of(inputs) -> SourceCoeffs:
    return SourceCoeffs.from_row(inputs["source_coeff_3dmm"][0], full=False)


@pytest.fixture(scope="module")
def offline(stages, clip):
    _, i, _ = clip
    z = torch.from_numpy(i["a2p_z"])
    wav = (i["wav_int16"] / 32768).astype(np.float32)
    return clip_coefficients(stages.audio, wav, source_of(i), TimelineParams(style=int(i["pose_style"])),
                             ratio=i["blink_ratio"], latents=lambda k: z[k])


def test_offline_chain_every_frame(clip, offline):
    name, i, o = clip
    assert len(offline["windows"]) == (int(i["num_frames"]) if "num_frames" in i.files else 45)
    close(f"{name} indiv_mels", offline["indiv_mels"], o["indiv_mels"], atol=1e-5, rtol=0)
    close(f"{name} exp_coeff", offline["exp"], o["exp_coeff"])
    close(f"{name} pose_raw", offline["pose_raw"], o["pose_raw"])
    close(f"{name} pose_smoothed", offline["pose_smoothed"], o["pose_smoothed"])
    close(f"{name} coeffs70", offline["coeffs"], o["coeffs70"])
    close(f"{name} target_semantics", offline["windows"], o["target_semantics"])


def test_offline_mapping_keypoints_and_frames(stages, clip, offline):
    name, i, o = clip
    if "he_driving_yaw" not in o:
        pytest.skip(f"{name} stores no per-frame mapping outputs")  # parity45: pinned in test_engine
    windows = torch.from_numpy(offline["windows"])
    with torch.inference_mode():
        motion = stages.motion.mapping(windows)
        for f in ("yaw", "pitch", "roll", "t", "exp"):
            close(f"{name} he_driving_{f}", getattr(motion, f), o[f"he_driving_{f}"])
        enc = stages.source.encode(torch.from_numpy(i["source_image"]))
        close(f"{name} kp_canonical", enc["kp_canonical"][0], o["kp_canonical"], atol=5e-5)
        kp_source = stages.motion(torch.from_numpy(source_of(i).source_window())[None], enc["kp_canonical"])
        close(f"{name} kp_source", kp_source[0], o["kp_source"], atol=5e-5)
        kp = stages.motion(windows, enc["kp_canonical"])
        close(f"{name} kp_driving (every frame)", kp, o["kp_driving"])
        # the production MotionStage is mapping + transform; the transform alone on the stored motion
        assert torch.equal(kp, transform_keypoints(enc["kp_canonical"], motion))
        frames = [int(f) for f in i["generator_frames"]]
        pred = stages.frame(enc["feature_3d"], enc["compressed"], kp_source, kp[frames])
    d = np.abs(pred.numpy() - o["predictions"])
    print(f"{name} predictions {frames}: max {d.max():.3g}, mean {d.mean():.3g}")
    assert d.max() <= 1e-2 and d.mean() <= 1e-4


def test_streaming_reference_preset_every_frame(stages, clip):
    """The live path's timeline with the 'reference' preset equals the reference on every
    frame of the clip, the remainder chunk and the end of the clip included."""
    name, i, o = clip
    engine = SadTalkerEngine(sadtalker_config(preset="reference", pose_style=int(i["pose_style"])), stages=stages)
    assert engine.window_spec.after == 50 * 640 + 2120
    r, z = i["blink_ratio"][:, 0], torch.from_numpy(i["a2p_z"])
    engine.timeline = CoefficientTimeline(stages.audio, engine.timeline.p, ratio=lambda f: float(r[f]),
                                          latents=lambda k: z[k])
    wav = (i["wav_int16"] / 32768).astype(np.float32)
    win = Windower(ArrayAudio(wav, 16000), engine.window_spec, 25)
    ref = o["target_semantics"]
    got = []
    for k in range(len(ref)):
        shown, w = engine.coefficient_window(win.window(k), source_of(i))
        assert shown == k
        got.append(w)
    close(f"{name} streamed target_semantics (every frame)", np.stack(got), ref)
    assert engine.timeline.decodes == len(z) and engine.timeline.resyncs == 0


def test_streaming_without_the_end_differs_only_at_the_end(stages):
    """Control: a live stream never ends, so without the file's end the last frames (clamped
    windows, remainder chunk) differ from the reference, and the frames before them do not."""
    i, o = (np.load(p) for p in CLIPS["clip_a"])
    engine = SadTalkerEngine(sadtalker_config(preset="reference", pose_style=7), stages=stages)
    r, z = i["blink_ratio"][:, 0], torch.from_numpy(i["a2p_z"])
    engine.timeline = CoefficientTimeline(stages.audio, engine.timeline.p,
                                          ratio=lambda f: float(r[f]) if f < len(r) else 0.0,
                                          latents=lambda k: z[k] if k < len(z) else torch.zeros(64))
    wav = (i["wav_int16"] / 32768).astype(np.float32)
    padded = np.concatenate([wav, np.zeros(16000, np.float32)])  # silence goes on; no end
    win = Windower(ArrayAudio(padded, 16000), engine.window_spec, 25)
    ref = o["target_semantics"]
    d = np.array([np.abs(engine.coefficient_window(win.window(k), source_of(i))[1] - ref[k]).max()
                  for k in range(len(ref))])
    print("first differing frame without the end:", np.flatnonzero(d > 1e-4)[:1])
    assert (d[:150] <= 1e-4).all() and (d[-13:] > 1e-4).all()


@pytest.mark.parametrize("t", [1, 5, 20, 21, 22, 40, 139, 140, 207, 1000])
def test_reference_blink_rule(t):
    """The reference's blink rule: none for T ≤ 20 (and at T = 21, where it crashes), gaps from
    [min(10, T), min(T // 2, 70)), each blink the 5-frame shape, ending by frame T-2."""
    r = reference_blinks(t, seed=3)
    assert r.shape == (t,)
    if t <= 21:
        assert not r.any()
        return
    starts = np.flatnonzero((r == 0.5) & (np.r_[0.0, r[:-1]] == 0))
    assert len(starts) >= 1 and r[-1] == 0
    prev_end = 0
    for s in starts:
        assert np.array_equal(r[s : s + 5], np.float32([0.5, 0.9, 1.0, 0.9, 0.5]))
        assert min(10, t) <= s - prev_end < min(t // 2, 70)
        prev_end = s + 5
    assert starts[-1] + 4 <= t - 2
