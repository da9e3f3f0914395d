"""What the live threads share: the bounded store of rendered frames and the counters."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from vcam_talker.frames import VideoFrame


@dataclass
class PipelineStats:
    frames_rendered: int = 0
    frames_emitted: int = 0
    frames_repeated: int = 0
    windows_skipped: int = 0
    #: frames rendered in catch-up batches (also in frames_rendered), and how many batches
    frames_batched: int = 0
    batches: int = 0
    engine_errors: int = 0
    engine_ms: deque = field(default_factory=lambda: deque(maxlen=500))
    ready_s: deque = field(default_factory=lambda: deque(maxlen=500))
    emit_times: deque = field(default_factory=lambda: deque(maxlen=500))
    #: frames that reached at least one open sink (or ticks while no sink is open): the
    #: proof of progress the watchdog ping and the fps figure are made from
    frames_published: int = 0
    publish_times: deque = field(default_factory=lambda: deque(maxlen=500))
    stalls: int = 0
    last_stall_s: float = 0.0
    #: monotonic time the last stall ended; frames whose audio predates it are not measured
    resumed_at: float = -1e18
    audio_skipped_samples: int = 0
    loop_errors: dict = field(default_factory=dict)
    thread_restarts: int = 0

    def snapshot(self, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        ms = np.array(self.engine_ms) if self.engine_ms else np.zeros(1)
        # the rate of the last 2 s of published frames: 0 when nothing is published
        pt = np.array(self.publish_times)
        pt = pt[pt >= now - 2.0]
        fps = (len(pt) - 1) / (pt[-1] - pt[0]) if len(pt) > 2 and pt[-1] > pt[0] else 0.0
        return {"fps": round(float(fps), 2), "engine_ms_p50": round(float(np.percentile(ms, 50)), 2),
                "engine_ms_p95": round(float(np.percentile(ms, 95)), 2),
                "frames_emitted": self.frames_emitted, "frames_published": self.frames_published,
                "frames_rendered": self.frames_rendered,
                "frames_repeated": self.frames_repeated, "windows_skipped": self.windows_skipped,
                "frames_batched": self.frames_batched, "batches": self.batches,
                "engine_errors": self.engine_errors, "stalls": self.stalls,
                "last_stall_s": round(self.last_stall_s, 2),
                "audio_skipped_samples": self.audio_skipped_samples,
                "loop_errors": dict(self.loop_errors), "thread_restarts": self.thread_restarts}


class FrameStore:
    """The most recent rendered frames by index (bounded)."""

    def __init__(self, capacity: int = 16):
        self._frames: OrderedDict[int, VideoFrame] = OrderedDict()
        self._cap = capacity
        self._lock = threading.Lock()

    def put(self, frame: VideoFrame) -> None:
        with self._lock:
            self._frames[frame.index] = frame
            while len(self._frames) > self._cap:
                self._frames.popitem(last=False)

    def get(self, index: int) -> VideoFrame | None:
        """Frame ``index``, else the newest older one (the caller marks it repeated)."""
        with self._lock:
            f = self._frames.get(index)
            if f is not None:
                return f
            older = [i for i in self._frames if i < index]
            return self._frames[max(older)] if older else None

    def newest(self) -> int:
        with self._lock:
            return next(reversed(self._frames), -1)
