"""The engine thread yields to the audio threads."""

from __future__ import annotations

import os
import threading
import time

import pytest

from vcam_talker.stream.priority import ENGINE_NICE, lower_this_thread


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread nice here")
def test_lowering_one_thread_leaves_the_others():
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def worker():
        seen["new"] = lower_this_thread()
        seen["read"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["new"] == seen["read"] == min(19, base + ENGINE_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # this thread unchanged


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread nice here")
def test_the_engine_thread_runs_lower_and_the_pacer_does_not():
    """The real EngineWorker and Pacer threads, on a real ring fed by a looping source."""
    import numpy as np

    from vcam_talker.audio.demo import LoopingSource
    from vcam_talker.audio.ring import AudioRing
    from vcam_talker.frames import WindowSpec
    from vcam_talker.stream.delay import DelayEstimator
    from vcam_talker.stream.pipeline import EngineWorker, FrameStore, Pacer, PipelineStats
    from vcam_talker.stream.windows import Windower

    ring, spec, stats, stop = AudioRing(16000, 5.0), WindowSpec(16000, 0.05, 0.06), PipelineStats(), threading.Event()
    windower, delay, store = Windower(ring, spec, 25), DelayEstimator(0.1, 0.02, 0.06), FrameStore()
    nice = {}

    def render(window):
        nice["engine"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return np.zeros((8, 8, 3), np.uint8)

    def on_tick(now):
        nice["pacer"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    worker = EngineWorker(ring=ring, windower=windower, render=render, store=store, stats=stats, delay=delay, stop=stop)
    pacer = Pacer(ring=ring, windower=windower, fps=25, store=store, sinks=[], stats=stats, delay=delay, stop=stop,
                  idle_image=lambda: np.zeros((8, 8, 3), np.uint8), on_tick=on_tick)
    src = LoopingSource(ring, np.zeros(16000, np.float32), gap_s=0.0)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    src.start()
    worker.start()
    pacer.start()
    try:
        deadline = time.monotonic() + 5
        while len(nice) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        src.stop()
    assert nice == {"engine": min(19, base + ENGINE_NICE), "pacer": base}
