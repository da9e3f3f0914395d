"""The one thread that runs torch for a sadtalker engine.

Compiled graphs and CUDA-graph trees keep per-thread state: a graph recorded by a warm-up on
the control thread is not the one a live frame on ``vcam-engine`` replays (torch up to 2.12
asserts, later ones re-record). So the engine sends every torch job here: warm-up, a swap's
preparation and the live frames. Jobs run one at a time in arrival order, so a swap's
preparation runs between two live frames. Jobs marked ``side`` run on a side CUDA stream and
wait for it at their end (their results go to the host).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import torch

from vcam_talker.errors import EngineError

T = TypeVar("T")


class TorchThread:
    """Runs jobs on one thread, started on the first job; a job sent from that thread runs at once."""

    def __init__(self, device: torch.device, name: str = "vcam-torch") -> None:
        self.device, self.name = device, name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._side = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def ident(self) -> int | None:
        return self._thread.ident if self._thread is not None else None

    def call(self, fn: Callable[..., T], *args: Any, side: bool = False) -> T:
        """``fn(*args)`` on the torch thread; its exception is raised here."""
        if threading.current_thread() is self._thread:
            return self._run(fn, args, side)
        fut: Future = Future()
        with self._lock:
            if self._closed:
                raise EngineError(f"sadtalker: the engine was closed ({self.name})")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._jobs.put((fut, fn, args, side))
        return fut.result()

    def _run(self, fn, args, side):
        if not (side and self.device.type == "cuda"):
            return fn(*args)
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        # the side stream first waits for work already queued (the inputs may come from it)
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side):
            out = fn(*args)
        self._side.synchronize()
        return out

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, fn, args, side = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._run(fn, args, side))
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued jobs and end the thread (a no-op from the thread itself)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._jobs.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
