"""The classic engine's idle life and locality, on the default avatar."""

from __future__ import annotations

import numpy as np
import pytest

from vcam_talker.config import Config, from_dict, to_dict
from vcam_talker.engines.classic.engine import ClassicEngine
from vcam_talker.stream.windows import ArrayAudio, Windower
from tests.conftest import DEFAULT_AVATAR

FPS = 25


def engine_with(**classic) -> ClassicEngine:
    d = to_dict(Config())
    d["engine"]["classic"].update(classic)
    return ClassicEngine(from_dict(d))


@pytest.fixture(scope="module")
def silent_run(tmp_path_factory):
    import os

    os.environ["VCAM_TALKER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    eng = engine_with()
    av = eng.prepare(DEFAULT_AVATAR)
    win = Windower(ArrayAudio(np.zeros(16000 * 20, np.float32), 16000), eng.window_spec, FPS)
    motions, frames = [], []
    for i in range(20 * FPS):
        m = eng.motion_for(win.window(i))
        motions.append(m)
        if i % 5 == 0:
            frames.append(eng.renderer(av).render(m))
    return eng, av, motions, np.array(frames)


def test_silence_keeps_mouth_shut_and_blinks_every_2_to_6_s(silent_run):
    _, _, motions, _ = silent_run
    assert max(m.open for m in motions) == 0.0
    blink = np.array([m.blink for m in motions])
    onsets = np.flatnonzero((blink[1:] > 0) & (blink[:-1] == 0)) + 1
    intervals = np.diff(onsets) / FPS
    assert len(onsets) >= 4
    # onsets are sampled at frame times, so allow one frame either way
    assert intervals.min() >= 2.0 - 1 / FPS and intervals.max() <= 6.0 + 1 / FPS, intervals
    assert blink.max() == pytest.approx(1.0, abs=0.05)  # a blink closes the eyes fully


def test_sway_is_alive_but_bounded(silent_run):
    _, _, motions, _ = silent_run
    x = np.array([m.sway_x for m in motions])
    r = np.array([m.sway_deg for m in motions])
    assert x.std() > 0.2 and r.std() > 0.2  # it moves
    # bounded by the sum of the sine amplitudes, whatever the duration: no drift
    assert np.abs(x).max() <= 1.5 and np.abs(r).max() <= 1.3
    first, last = x[: 10 * FPS], x[10 * FPS:]
    assert abs(first.mean() - last.mean()) < 0.6


def test_only_the_head_region_changes(silent_run):
    _, av, _, frames = silent_run
    x0, y0, x1, y1 = (int(v) for v in av.data["head_box"])
    outside = np.ones(av.image.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert outside.mean() > 0.3
    for f in frames:
        np.testing.assert_array_equal(f[outside], av.image[outside])
    inside = frames[:, y0:y1, x0:x1].astype(np.int16)
    assert np.abs(np.diff(inside, axis=0)).max() > 10  # sway and blinks do move the head


def test_eyes_close_on_blink_without_touching_the_mouth(silent_run, cache_dir):
    eng = engine_with(sway=0.0)
    av = eng.prepare(DEFAULT_AVATAR)
    r = eng.renderer(av)
    from vcam_talker.engines.classic.motion import Motion

    open_eyes, closed = r.render(Motion()), r.render(Motion(blink=1.0))
    lm = av.landmarks
    diff = np.abs(open_eyes.astype(np.int16) - closed).sum(2)
    ey0, ey1 = int(lm[36:48, 1].min()) - 6, int(lm[36:48, 1].max()) + 6
    my0 = int(lm[48:68, 1].min()) - 4
    assert diff[ey0:ey1].mean() > 5
    assert diff[my0:].max() == 0
    # the dark iris between the lids is covered by the lid's skin
    for eye in (lm[36:42], lm[42:48]):
        xa, xb = int(eye[:, 0].min()) + 2, int(eye[:, 0].max()) - 2
        ya, yb = int(eye[1:3, 1].mean()), int(eye[4:6, 1].mean())
        lum_open = open_eyes[ya:yb, xa:xb].mean()
        lum_closed = closed[ya:yb, xa:xb].mean()
        assert lum_closed > lum_open + 15, (lum_open, lum_closed)
