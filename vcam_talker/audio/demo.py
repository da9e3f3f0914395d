"""A stand-in microphone that loops a speech file in real time (``--demo``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np


class LoopingSource:
    """Writes ``samples`` into ``ring`` block by block at real-time pace, looping,
    stamping each block with the monotonic time it is 'captured'."""

    #: behind real time by more than this (s): skip to now
    STALL_S = 0.5

    def __init__(self, ring, samples: np.ndarray, block_ms: float = 10.0, gap_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, name: str = "vcam-demo-source"):
        self.ring = ring
        self.clip = np.concatenate([samples.astype(np.float32), np.zeros(int(gap_s * ring.sample_rate), np.float32)])
        self.block = max(1, int(ring.sample_rate * block_ms / 1000))
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.stats = {"blocks": 0}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        rate = self.ring.sample_rate
        # continue the ring's clock: a replacement source (silence while a device is
        # away) must not restart stream time
        t0 = self.clock() - self.ring.end / rate
        pos = 0
        n = self.ring.end
        while not self._stop.is_set():
            # the block [n, n + block) is 'captured' when its last sample has arrived
            due = t0 + (n + self.block) / rate
            wait = due - self.clock()
            if wait > 0 and self._stop.wait(wait):
                break
            if wait < -self.STALL_S:
                # the process was stopped or starved: a real device would have lost that
                # audio too, so go on from now instead of writing seconds of stale blocks
                t0 += -wait
                self.stats["stalls"] = self.stats.get("stalls", 0) + 1
            idx = (pos + np.arange(self.block)) % len(self.clip)
            self.ring.write(self.clip[idx], t0 + n / rate)
            pos = (pos + self.block) % len(self.clip)
            n += self.block
            self.stats["blocks"] += 1
