"""The coefficient timeline's streaming side: bounded state, continuity, restarts, presets.

Parity with the reference (offline and the 'reference' preset, every frame) is pinned in
test_clip_parity.py; these tests cover what only a live stream does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vcam_talker.engines.sadtalker.engine import SadTalkerEngine
from vcam_talker.engines.sadtalker.presets import PRESETS, TimelineParams
from vcam_talker.engines.sadtalker.randomness import BlinkSchedule
from vcam_talker.engines.sadtalker.timeline import _HISTORY, CoefficientTimeline, SourceCoeffs, clip_coefficients
from vcam_talker.stream.windows import ArrayAudio, Windower

from .official_weights import sadtalker_config
from .parity_build import fixture_stages
from .weight_rule import PARITY


@pytest.fixture(scope="module")
def stages():
    return fixture_stages()


@pytest.fixture(scope="module")
def clip():
    i, o = np.load(PARITY / "inputs.npz"), np.load(PARITY / "outputs.npz")
    return o["wav_float32_cropped"], SourceCoeffs.from_row(i["source_coeff_3dmm"][0], full=False)


def stream(engine: SadTalkerEngine, wav: np.ndarray, frames, source: SourceCoeffs) -> dict[int, np.ndarray]:
    win = Windower(ArrayAudio(wav, 16000), engine.window_spec, engine.config.video.fps)
    return {k: engine.coefficient_window(win.window(k), source)[1] for k in frames}


def test_live_default_is_bounded_continuous_and_restarts(stages, clip):
    """The live default (low-latency): frames from the first window on, bounded state, a
    continuous head path across pose decodes, blinks, skipped windows and restarts."""
    wav0, source = clip
    engine = SadTalkerEngine(sadtalker_config(), stages=stages)
    p = engine.timeline.p
    assert engine.config.engine.sadtalker.preset == "low-latency"
    assert (p.lookahead, p.pose_chunk, p.pose_delay) == (3, 4, 6)
    assert engine.window_spec.after == 3 * 640 + 2120 and engine.window_spec.before >= 1881
    wav = np.tile(wav0, 8)  # 360 frames of speech, no end: a live stream
    wav = np.concatenate([wav, np.zeros(16000, np.float32)])
    windows = stream(engine, wav, range(340), source)
    tl = engine.timeline
    assert tl.decodes >= 340 // 4 and tl.resyncs == 0
    assert len(tl._exp_emb) <= _HISTORY and len(tl._motion) <= _HISTORY + 8
    assert len(tl._mel) <= 3.2 * _HISTORY + 20 and len(tl._x) <= 640 * (_HISTORY + 8)
    pose = np.stack([windows[k][64:70, 13] for k in range(40, 340)])
    assert np.isfinite(pose).all()

    def roughness(track):  # largest frame-to-frame step relative to the range, per channel
        return np.abs(np.diff(track, axis=0)).max(axis=0) / np.ptp(track, axis=0)

    offline = clip_coefficients(stages.audio, wav[: 340 * 640], source)["pose_smoothed"][40:]
    print("pose roughness streamed", roughness(pose), "offline", roughness(offline))
    assert (roughness(pose) <= 1.25 * roughness(offline).max()).all()
    # blinks reach the expression net through the ratio, at 10..69-frame gaps
    ratios = np.array(tl._ratio)
    assert ratios.max() == 1.0 and (ratios == 1.0).sum() >= 2
    # a slow consumer skips windows: past the overlap the timeline restarts at a whole frame
    w = stream(engine, wav, [360], source)[360]
    assert tl.resyncs == 1 and np.isfinite(w).all() and tl.origin % 640 == 0 and tl.origin_frame <= 360
    # time going backwards is a new stream
    stream(engine, wav, [0], source)
    assert tl.resyncs == 1 and tl.origin == 0 and tl.frames_ready <= 1 + 3 + 1


def test_ending_a_stream_recomputes_its_tail(stages, clip):
    """A stream that saw audio past the clip's cut (a partial last frame) and then ends equals
    the clip fed whole: the mel rows, embeddings and pose decode that read past the cut are
    redone with the reference's zero padding."""
    wav, source = clip
    wav = np.concatenate([wav, wav[:5000]])[: 45 * 640 + 500]  # 500 samples past the last frame
    z = torch.randn(4, 64, generator=torch.Generator().manual_seed(5))
    whole = clip_coefficients(stages.audio, wav, source, TimelineParams(pose_chunk=32), latents=lambda k: z[k])
    tl = CoefficientTimeline(stages.audio, TimelineParams(lookahead=60, pose_chunk=32), latents=lambda k: z[k])
    tl.set_source(source)
    for start in range(0, len(wav), 3000):  # blocks that do not line up with frames
        tl.ingest(wav[start : start + 3000], start)
    before = tl.frames_ready
    tl.finish()
    # frame 42 was embedded from mel rows 143-144, which read audio past the cut
    assert tl.num_frames == 45 and before == 43
    got = np.stack([tl.window(k, source) for k in range(45)])
    d = np.abs(got - whole["windows"]).reshape(45, -1).max(1)
    assert (d <= 1e-5).all(), d


def test_presets_and_params():
    assert PRESETS["reference"].pose_chunk == 32 and PRESETS["reference"].lookahead == 50
    assert TimelineParams.preset("reference").pose_delay == 0
    assert TimelineParams.preset("balanced").pose_delay == 0
    p = TimelineParams(lookahead=0)
    assert p.window_samples(25) == (1881, 2120)
    before, after = TimelineParams(lookahead=2).window_samples(30)
    assert after == 2 * 640 + 2120 + 320
    before, after = TimelineParams(lookahead=0).window_samples(2)
    assert before + after >= 8000  # consecutive 2 fps windows touch
    with pytest.raises(ValueError, match="whole clip"):
        TimelineParams().window_samples(25)


def test_custom_preset_reads_its_fields(stages):
    engine = SadTalkerEngine(sadtalker_config(preset="custom", lookahead_frames=7, pose_chunk=16), stages=stages)
    assert (engine.timeline.p.lookahead, engine.timeline.p.pose_chunk) == (7, 16)
    engine = SadTalkerEngine(sadtalker_config(preset="balanced", lookahead_frames=7), stages=stages)
    assert engine.timeline.p.lookahead == PRESETS["balanced"].lookahead


def test_blink_schedule_matches_reference_shape():
    b = BlinkSchedule(3)
    r = np.array([b(i) for i in range(2000)])
    starts = np.flatnonzero((r[1:] == 0.5) & (r[:-1] == 0))
    assert len(starts) > 20
    for s in starts[:5]:
        assert r[s + 1 : s + 6].tolist() == [0.5, 0.9, 1.0, 0.9, 0.5]
    gaps = np.diff(starts) - 5
    assert gaps.min() >= 10 and gaps.max() < 70
    assert BlinkSchedule(3, enabled=False)(40) == 0.0
