"""Thread priorities: the renderer yields to the audio.

Linux gives each thread its own nice value (setpriority on the thread id). The engine
thread runs ENGINE_NICE above the rest of the daemon, so when the CPU is saturated the
audio threads (PortAudio's callbacks, the capture worker) and the pacer win, and the
renderer loses: frames are repeated (counted) rather than the mic breaking up. Raising
a priority needs privileges a user service lacks; lowering one's own never does.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

#: 5 nice levels is about a third of the CPU share of a nice-0 thread: enough for the
#: engine on an idle core, and it loses a contested one
ENGINE_NICE = 5


def lower_this_thread(by: int = ENGINE_NICE) -> int | None:
    """Add ``by`` to the calling thread's nice value; returns the new value (None where
    threads cannot be niced on their own)."""
    if not hasattr(os, "setpriority"):
        return None
    tid = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + by))
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError as exc:
        log.debug("cannot lower %s's priority: %s", threading.current_thread().name, exc)
        return None
