"""The timeline's row cache (issue 10): window() reuses final expression and pose rows instead
of recomputing ~27 expression rows and re-smoothing ~40 pose rows every frame, and gives the
windows the uncached computation gives, on a live stream with restarts and on an ended clip."""

from __future__ import annotations

import numpy as np
import pytest

from vcam_talker.engines.sadtalker.engine import SadTalkerEngine
from vcam_talker.engines.sadtalker.presets import coeff_frame
from vcam_talker.engines.sadtalker.timeline import SourceCoeffs
from vcam_talker.stream.windows import ArrayAudio, Windower

from .official_weights import sadtalker_config
from .parity_build import fixture_stages
from .weight_rule import PARITY


@pytest.fixture(scope="module")
def stages():
    return fixture_stages()


def uncached(tl, k: int, source: SourceCoeffs) -> np.ndarray:
    """window()'s rows through coefficients(), which computes every row afresh."""
    top = tl.frames_ready - 1 if tl.p.lookahead is None else min(tl.frames_ready - 1, k + tl.p.lookahead)
    rows = np.maximum(np.clip(np.arange(k - 13, k + 14), 0, top), tl._base)
    return tl.coefficients(rows, source, np.maximum(rows - tl.p.pose_delay, 0)).T


@pytest.mark.parametrize("preset", ["low-latency", "balanced", "reference"])
def test_cached_windows_equal_uncached(stages, preset):
    i, o = np.load(PARITY / "inputs.npz"), np.load(PARITY / "outputs.npz")
    source = SourceCoeffs.from_row(i["source_coeff_3dmm"][0], full=False)
    wav = np.tile(o["wav_float32_cropped"], 10)
    engine = SadTalkerEngine(sadtalker_config(preset=preset), stages=stages)
    tl = engine.timeline
    rows_computed = []
    real = stages.audio.exp_head

    def counting(emb, ref, ratio):
        rows_computed.append(len(emb))
        return real(emb, ref, ratio)

    stages.audio.exp_head = counting
    try:
        win = Windower(ArrayAudio(wav, 16000), engine.window_spec, 25)
        worst = 0.0
        frames = list(range(0, 200)) + list(range(320, 340))  # a gap: the timeline restarts
        for n, k in enumerate(frames):
            w = win.window(k)
            rows_computed.clear()
            got = engine.coefficient_window(w, source)[1]
            if n >= 40 and k < 200:
                assert sum(rows_computed) <= 4, rows_computed  # the new rows only, not the window's 27
            worst = max(worst, float(np.abs(got - uncached(tl, tl.clip_frame(coeff_frame(w.t)), source)).max()))
        tl.finish()  # the end redoes the tail's values: the cache must not keep the old ones
        for k in range(tl.num_frames - 20, tl.num_frames):
            worst = max(worst, float(np.abs(tl.window(k + tl.origin_frame, source) - uncached(tl, k, source)).max()))
    finally:
        stages.audio.exp_head = real
    print(f"{preset}: max |cached - uncached| {worst:.3g}")
    assert tl.resyncs == 1 and worst <= 1e-6
