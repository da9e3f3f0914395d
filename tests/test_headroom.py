"""Audio headroom: the plan (pure) as a table, and the output buffer's size."""

from __future__ import annotations

import pytest

from vcam_talker.audio import headroom as hr
from vcam_talker.audio.headroom import Headroom, output_latency, reopen_wanted, step


@pytest.mark.parametrize("before, dry, now, extra, resumed", [
    (Headroom(), 0, 10.0, 0.0, -1e18),                                   # quiet: nothing
    (Headroom(), 3, 10.0, hr.STEP_S, -1e18),                             # the ring ran dry: raise
    (Headroom(0.04, 3, 5.0, 2), 7, 10.0, 0.06, -1e18),                   # again
    (Headroom(hr.MAX_S, 3, 5.0, 9), 9, 10.0, hr.MAX_S, -1e18),           # capped
    (Headroom(0.04, 3, 5.0, 2), 3, 5.0 + hr.CALM_S - 1, 0.04, -1e18),    # calm, but not long enough
    (Headroom(0.04, 3, 5.0, 2), 3, 5.0 + hr.CALM_S, 0.04 - hr.DECAY_S, -1e18),  # a calm quarter hour: sink
    (Headroom(0.0005, 3, 5.0, 2), 3, 5.0 + hr.CALM_S, 0.0, -1e18),       # never below zero
    (Headroom(0.04, 30, 5.0, 2), 2, 10.0, 0.04, -1e18),                  # a new playback's counter
    (Headroom(), 3, 10.0, 0.0, 6.0),                              # 4 s after our own stall: the stall's
    (Headroom(), 3, 10.0, hr.STEP_S, 10.0 - hr.STALL_GRACE_S),    # the grace is over: a real hiccup
])
def test_step(before, dry, now, extra, resumed):
    after = step(before, dry, now, resumed)
    assert after.extra_s == pytest.approx(extra)
    assert after.seen == dry


def test_a_raise_restarts_the_calm_clock():
    h = step(Headroom(), 1, 100.0)
    assert (h.last_raise, h.raises) == (100.0, 1)
    assert step(h, 1, 100.0 + hr.CALM_S - 1).extra_s == h.extra_s


@pytest.mark.parametrize("delay, lo, hi", [(0.10, 0.05, 0.05), (0.17, 0.05, 0.06), (0.35, 0.11, 0.13),
                                           (2.0, 0.2, 0.2)])
def test_output_latency_splits_the_delay(delay, lo, hi):
    assert lo <= output_latency(delay) <= hi


@pytest.mark.parametrize("open_latency, delay, want", [
    (0.05, 0.17, False),   # the default classic delay: the buffer it opened with
    (0.05, 0.21, True),    # 40 ms of headroom later: 15 ms more buffer fits
    (0.09, 0.21, False),
    (0.2, 2.0, False),     # at the cap
])
def test_reopen_only_for_a_real_gain(open_latency, delay, want):
    assert reopen_wanted(open_latency, delay) is want
