"""Keeping the daemon's heap flat over a working day of avatar swaps.

Two things made RSS climb in steps at swaps (benchmarks/soak_workday.py):
* ``gc.freeze()`` after a reload moved everything alive *or not yet collected* to the
  permanent generation, so an old engine or avatar caught in a reference cycle could
  never be freed. :func:`settle` collects first; with the start-up objects already
  frozen that collection walks only what was built since, a few milliseconds.
* glibc keeps freed memory in its arenas (one per thread that allocated); big numpy
  buffers freed by a swap stayed in RSS. ``malloc_trim(0)`` hands free pages back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time

_libc = None


def _malloc_trim():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    return getattr(_libc, "malloc_trim", None) if _libc else None


def trim() -> bool:
    """Return free heap pages to the OS (glibc's ``malloc_trim(0)``); False where there is
    no such call (musl, macOS). ctypes releases the GIL around it, so the audio threads run."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(ctypes.c_size_t(0))
    return True


def settle() -> dict:
    """After a reload: collect what the swap left (cycles included), freeze the survivors
    (the new engine and avatar are long-lived, see Daemon.start) and trim the heap.
    Returns what it did, for the log: collected objects, ms spent, whether it trimmed."""
    t0 = time.perf_counter()
    collected = gc.collect()
    gc.freeze()
    t1 = time.perf_counter()
    trimmed = trim()
    return {"collected": collected, "collect_ms": round((t1 - t0) * 1e3, 1),
            "trim_ms": round((time.perf_counter() - t1) * 1e3, 1), "trimmed": trimmed}
