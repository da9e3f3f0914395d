"""The live threads cannot die (issue 13), with the real ring, windower, pacer and a real
looping source: a stall past the ring's capacity, a sink that kills its thread, and
status fps that drops to 0 when nothing is published."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vcam_talker.audio.demo import LoopingSource
from vcam_talker.audio.ring import AudioRing
from vcam_talker.frames import WindowSpec
from vcam_talker.stream.guard import revive_dead
from vcam_talker.stream.pipeline import DelayEstimator, FrameStore, Pacer, PipelineStats
from vcam_talker.stream.windows import Windower

RATE, FPS = 16000, 25


class Sink:
    name, wants_audio = "rec", True

    def __init__(self):
        self.times: list[float] = []
        self.audio = 0
        self.kill_at: int | None = None

    def send(self, frame, audio):
        if self.kill_at is not None and len(self.times) == self.kill_at:
            self.kill_at = None
            raise SystemExit("a BaseException no per-iteration guard catches")
        self.times.append(time.monotonic())
        self.audio += 0 if audio is None else len(audio)


def make(seconds: float = 2.0):
    ring = AudioRing(RATE, seconds)
    spec = WindowSpec(RATE, 0.05, 0.06)
    stats, stop, sink = PipelineStats(), threading.Event(), Sink()
    pacer = Pacer(ring=ring, windower=Windower(ring, spec, FPS), fps=FPS, store=FrameStore(), sinks=[sink],
                  stats=stats, delay=DelayEstimator(0.1, 0.02, 0.06), stop=stop,
                  idle_image=lambda: np.zeros((8, 8, 3), np.uint8))
    return ring, pacer, stats, stop, sink


def test_reader_behind_an_overwritten_ring_resyncs_to_the_live_edge():
    ring, pacer, stats, stop, sink = make(seconds=2.0)
    ring.write(np.zeros(RATE, np.float32), time.monotonic() - 5.0)
    pacer.tick(time.monotonic())
    ring.write(np.zeros(4 * RATE, np.float32), time.monotonic() - 4.0)  # 4 s more: the old part is gone
    pacer.tick(time.monotonic())  # used to raise RingOverwrittenError and end the thread
    assert stats.audio_skipped_samples > 2 * RATE and stats.frames_published == 2


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the kill is the point
def test_a_dead_pacer_is_restarted_and_fps_tells_the_truth():
    ring, pacer, stats, stop, sink = make(seconds=5.0)
    src = LoopingSource(ring, np.zeros(RATE, np.float32), gap_s=0.0)
    src.start()
    sink.kill_at = 10
    pacer.start()
    try:
        threads = [pacer]
        time.sleep(1.0)
        assert not pacer.is_alive() and len(sink.times) == 10
        assert stats.snapshot(time.monotonic() + 2.5)["fps"] == 0.0  # nothing published: 0, not the old rate
        threads = revive_dead(threads)
        assert threads[0] is not pacer and stats.thread_restarts == 1
        time.sleep(1.5)
        assert threads[0].is_alive() and len(sink.times) > 10 + FPS
        assert abs(stats.snapshot()["fps"] - FPS) < 2.0
    finally:
        stop.set()
        src.stop()


def test_a_sink_failing_every_frame_is_counted_not_fatal_and_not_published():
    ring, pacer, stats, stop, sink = make()
    sink.send = lambda frame, audio: 1 / 0
    ring.write(np.zeros(RATE, np.float32))
    for _ in range(5):
        pacer.tick(time.monotonic())
    assert pacer.sink_errors == {"rec": 5} and stats.frames_emitted == 5 and stats.frames_published == 0
