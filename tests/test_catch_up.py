"""Catch-up in batches (issue 10): the engine worker, behind the live edge, renders the backlog
that can still be shown as one ``render_batch`` call instead of skipping it.

Real ring, windower, delay estimator and a real-time source; the render functions are slow
on purpose (a single frame takes longer than a frame period, a batch is cheaper per frame,
as on a GPU) and record which frame each window is.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from vcam_talker.audio.demo import LoopingSource
from vcam_talker.audio.ring import AudioRing
from vcam_talker.frames import WindowSpec
from vcam_talker.stream.delay import DelayEstimator
from vcam_talker.stream.pipeline import EngineWorker, FrameStore, PipelineStats
from vcam_talker.stream.windows import Windower

RATE, FPS = 16000, 25
SINGLE_S = 0.060  # > the 40 ms period: one frame at a time falls behind
BATCH_S = (0.010, 0.012)  # fixed + per frame: a batch of 3 takes 46 ms for 120 ms of video


class Recorder:
    def __init__(self):
        self.calls: list[list[int]] = []

    def index(self, window) -> int:
        return int(round(window.t * FPS))

    def image(self, i: int) -> np.ndarray:
        return np.full((4, 4, 3), i % 256, np.uint8)

    def render(self, window):
        time.sleep(SINGLE_S)
        self.calls.append([self.index(window)])
        return self.image(self.index(window))

    def render_batch(self, windows):
        time.sleep(BATCH_S[0] + BATCH_S[1] * len(windows))
        idx = [self.index(w) for w in windows]
        self.calls.append(idx)
        return [self.image(i) for i in idx]


def run(seconds: float, *, batch: bool, delay_s: float = 0.4, max_batch: int = 4):
    ring = AudioRing(RATE, 5.0)
    windower = Windower(ring, WindowSpec(RATE, 0.05, 0.06), FPS)
    stats, stop, rec, store = PipelineStats(), threading.Event(), Recorder(), FrameStore(capacity=256)
    # nothing calls update(): the delay, hence the latency budget, stays at delay_s
    worker = EngineWorker(ring=ring, windower=windower, render=rec.render, store=store, stats=stats,
                          delay=DelayEstimator(delay_s, 0.02, 0.0), stop=stop,
                          render_batch=rec.render_batch if batch else None, max_batch=max_batch)
    src = LoopingSource(ring, np.zeros(RATE, np.float32), gap_s=0.0)
    src.start()
    time.sleep(0.2)
    worker.start()
    time.sleep(seconds)
    stop.set()
    worker.join(timeout=2.0)
    src.stop()
    return rec, stats, store


def test_backlog_is_rendered_in_batches_in_order_without_gaps():
    rec, stats, store = run(2.0, batch=True, delay_s=1.0)  # a budget wide enough for a loaded CI machine
    flat = [i for call in rec.calls for i in call]
    batches = [c for c in rec.calls if len(c) > 1]
    snap = stats.snapshot()
    print(f"calls {len(rec.calls)}, batches {len(batches)} {[len(c) for c in batches]}, snapshot "
          f"rendered {snap['frames_rendered']} batched {snap['frames_batched']} skipped {snap['windows_skipped']}")
    assert len(batches) >= 5 and snap["batches"] == len(batches)
    assert snap["frames_batched"] == sum(map(len, batches)) and snap["frames_rendered"] == len(flat)
    assert all(len(c) <= 4 for c in batches)
    # after the first frame (the worker starts behind a running source, with nothing measured
    # yet): every window, in order, none twice, none skipped
    assert flat[1:] == list(range(flat[1], flat[-1] + 1))
    assert snap["windows_skipped"] == flat[0]  # only the start's jump to the live edge
    # each frame is stored under its own index, with the picture its window made
    for i in flat[-10:]:
        f = store.get(i)
        assert f.index == i and f.image[0, 0, 0] == i % 256


def test_without_render_batch_the_backlog_is_skipped_as_before():
    rec, stats, _ = run(1.5, batch=False)
    snap = stats.snapshot()
    assert snap["batches"] == 0 and snap["frames_batched"] == 0
    assert all(len(c) == 1 for c in rec.calls)
    flat = [c[0] for c in rec.calls]
    assert snap["windows_skipped"] > 5 and flat == sorted(set(flat))
    assert snap["windows_skipped"] == flat[-1] + 1 - len(flat)  # every window is rendered or counted


def test_a_batch_that_cannot_be_shown_in_time_is_skipped():
    """With no latency budget (delay 0) a late frame can never be shown: skip, as before."""
    rec, stats, _ = run(1.0, batch=True, delay_s=0.0)
    snap = stats.snapshot()
    assert snap["batches"] == 0 and snap["windows_skipped"] > 5
