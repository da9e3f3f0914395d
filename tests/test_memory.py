"""vcam_talker/memory.py: what a reload leaves behind is freed, and freed heap leaves RSS."""

from __future__ import annotations

import gc
import platform
import weakref

import pytest

from vcam_talker import memory


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_settle_frees_cyclic_garbage_that_a_bare_freeze_would_keep_forever():
    gc.collect()
    kept, freed = Node(), Node()
    kept_ref, freed_ref = weakref.ref(kept), weakref.ref(freed)
    gc.disable()  # no automatic collection may hide the difference
    try:
        del kept
        gc.freeze()  # what a reload did before: the unreachable cycle is now permanent
        gc.collect()
        assert kept_ref() is not None, "a frozen cycle is never collected"
        gc.unfreeze()
        gc.collect()
        assert kept_ref() is None
        del freed
        info = memory.settle()
        assert freed_ref() is None, "settle must collect before it freezes"
        assert info["collected"] >= 1 and info["collect_ms"] >= 0.0
    finally:
        gc.unfreeze()
        gc.enable()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_returns_fragmented_free_heap_to_the_os():
    # 64 KiB blocks (under glibc's mmap threshold, so they live in the heap) with a small
    # survivor after each: freeing the blocks leaves holes that free() alone cannot return
    blocks, keep = [], []
    for _ in range(3000):
        blocks.append(bytearray(64 * 1024))
        keep.append(bytearray(1024))  # over 512 bytes: from malloc, not pymalloc's arenas
    full = rss_mb()
    del blocks
    held = rss_mb()
    assert memory.trim() is True
    after = rss_mb()
    print(f"\nRSS {full:.0f} MB with 190 MB of blocks, {held:.0f} MB after free(), {after:.0f} MB after trim")
    assert held - after >= 100, (full, held, after)
    del keep
