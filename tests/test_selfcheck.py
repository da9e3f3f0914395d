"""Start-up self-check (issue 10): the advice table, and a measurement through a real engine."""

from __future__ import annotations

import pytest

from vcam_talker import config as C
from vcam_talker.engines import create_engine
from vcam_talker.selfcheck import advice, measure


@pytest.mark.parametrize(
    "engine, size, sustained, wanted, device, precision, expect",
    [
        ("sadtalker", "256²", 30.0, 25, "cuda", "float32", None),  # met
        ("sadtalker", "256²", 25.0, 25, "cpu", "float32", None),  # exactly met
        ("sadtalker", "512²", 12.0, 25, "cuda", "float16", "engine.sadtalker.size: 256"),  # size first
        ("sadtalker", "512²", 1.5, 25, "cpu", "float32", "engine.sadtalker.size: 256"),
        ("sadtalker", "256²", 18.0, 25, "cuda", "float32", "engine.sadtalker.precision: float16"),
        ("sadtalker", "256²", 18.0, 25, "cuda", "tf32", "engine.sadtalker.precision: float16"),
        ("sadtalker", "256²", 18.0, 25, "cuda", "float16", "video.fps: 18, or engine.name: classic"),
        ("sadtalker", "256²", 3.2, 25, "cpu", "float32", "engine.name: classic"),
        ("classic", "1920x1080", 20.0, 30, "cpu", "float32", "video.fps: 20"),
    ],
)
def test_advice_table(engine, size, sustained, wanted, device, precision, expect):
    line = advice(engine, size, sustained, wanted, device, precision)
    if expect is None:
        assert line is None
        return
    assert expect in line and "\n" not in line
    assert f"{sustained:.1f} fps" in line and f"configured {wanted}" in line and device in line


def test_measure_through_the_classic_engine(cache_dir):
    cfg = C.Config()
    cfg.video.width = cfg.video.height = 256
    engine = create_engine(cfg)
    avatar = engine.prepare(cfg.avatar_path())
    fast = measure(engine, avatar, fps=1, seconds=0.3)
    assert fast.ok and fast.suggestion is None and fast.frames >= 3 and fast.fps_sustained > 1
    assert fast.ms_p50 > 0 and "sustains" in fast.line() and fast.as_status()["engine"] == "classic"
    slow = measure(engine, avatar, fps=100000, seconds=0.3)  # no machine renders that
    assert not slow.ok and slow.suggestion == slow.line() and "below the configured 100000" in slow.line()


def test_an_engine_that_cannot_render_is_a_result_not_a_crash():
    from vcam_talker.config import Config
    from vcam_talker.engines.classic.engine import ClassicEngine
    from vcam_talker.selfcheck import measure_safely

    class Broken(ClassicEngine):
        def render(self, window, avatar):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    engine = Broken(Config())
    res = measure_safely(engine, None, 25, seconds=0.1)
    assert not res.ok and res.fps_sustained == 0.0
    assert "failed to render" in res.suggestion and "illegal memory access" in res.suggestion
