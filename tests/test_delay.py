"""When the pipeline delay may change: in a pause of the speech, or when it must."""

from __future__ import annotations

import pytest

from vcam_talker.stream.delay import DelayEstimator, apply_now


@pytest.mark.parametrize("change, waited, quiet, force, expect", [
    (0.025, 0.0, True, False, (True, False)),    # a pause: at once, spliced in silence
    (-0.004, 3.0, True, False, (True, False)),
    (0.025, 0.0, False, False, (False, False)),  # inside a word: wait for the pause
    (0.025, 7.9, False, False, (False, False)),
    (0.025, 8.0, False, False, (True, True)),    # nobody pauses for 8 s: glide in speech
    (0.30, 0.0, False, False, (True, True)),     # a huge rise: the picture would lag too long
    (-0.30, 0.0, False, False, (True, True)),
    (0.010, 0.0, False, True, (True, True)),     # after a stall: resync at once
])
def test_apply_now(change, waited, quiet, force, expect):
    assert apply_now(change, waited, quiet, force) == expect


def _settled(values):
    d = DelayEstimator(initial_s=0.1, margin_s=0.02, floor_s=0.05)
    for v in values:
        d.observe(v)
    return d


def test_a_rise_waits_for_a_pause_and_then_moves_value():
    d = _settled([0.10] * 50)
    d.update()
    assert d.pending and d.value == 0.1
    assert d.apply(0.0, quiet=True) and d.value == pytest.approx(0.10 + 0.02 + d.RAISE_S)
    first = d.value
    for _ in range(50):
        d.observe(0.15)  # the engine got slower: p98 rises by 50 ms
    d.update()
    assert d.pending
    assert not d.apply(10.0, quiet=False) and d.value == first  # speech: frames repeat instead
    assert not d.apply(13.0, quiet=False)
    assert d.apply(13.5, quiet=True) and d.value == pytest.approx(0.15 + 0.02 + d.RAISE_S)
    assert (d.deferred, d.forced) == (1, 0) and not d.pending
    assert not d.apply(14.0, quiet=True)  # nothing pending, nothing changes


def test_speech_without_a_pause_forces_the_change_after_max_wait():
    d = _settled([0.10] * 50)
    d.update()
    d.apply(0.0, quiet=True)
    for _ in range(50):
        d.observe(0.14)
    d.update()
    assert not d.apply(100.0, quiet=False)
    assert d.apply(100.0 + d.MAX_WAIT_S, quiet=False) and d.forced == 1


def test_after_a_stall_the_fresh_delay_applies_in_speech():
    d = _settled([0.10] * 50)
    d.update()
    d.apply(0.0, quiet=True)
    d.resync()
    for _ in range(30):
        d.observe(0.2)
    d.update()
    assert d.apply(1.0, quiet=False) and d.value == pytest.approx(0.2 + 0.02 + d.RAISE_S)


def test_an_input_stall_is_an_outlier_and_a_slower_engine_is_not():
    d = _settled([0.10] * 100)
    d.update()
    d.apply(0.0, quiet=True)
    base = d.value
    for _ in range(10):  # the input stalled for a moment: ten frames 1.7 s late
        d.observe(1.8)
    for _ in range(30):
        d.observe(0.10)
    d.update()
    assert d.outliers == 10 and d.wanted == base
    for _ in range(DelayEstimator.OUTLIER_RUN + 30):  # every frame 0.7 s later from now on
        d.observe(0.8)
    d.update()
    assert d.wanted == pytest.approx(0.8 + 0.02 + d.RAISE_S)


def test_a_large_excess_falls_by_a_tenth_a_second():
    d = _settled([1.8] * 100)
    d.update()
    d.apply(0.0, quiet=True)
    d.resync()
    for _ in range(100):
        d.observe(0.1)
    d.update()  # after a resync the fresh figure applies at once
    assert d.wanted == pytest.approx(0.123)
    d2 = _settled([0.1] * 100)
    d2.update()
    d2.wanted = 1.8  # left high by a transient
    seconds = 0
    while d2.wanted > 0.2 and seconds < 120:
        d2.update()
        seconds += 1
    assert 20 <= seconds <= 40  # not 1700 s at 1 ms a second


def test_a_fall_comes_off_at_most_max_fall_per_pause():
    d = _settled([0.10] * 100)
    d.update()
    d.apply(0.0, quiet=True)
    d.wanted = d.value - 0.1  # e.g. after a transient, the figure is 100 ms lower
    assert d.apply(1.0, quiet=True) and d.pending
    assert d.value == pytest.approx(d.wanted + 0.1 - d.MAX_FALL_S)
    assert not d.apply(2.0, quiet=False)  # speech: the rest waits
    d.apply(3.0, quiet=True)
    d.apply(4.0, quiet=True)
    assert d.value == pytest.approx(d.wanted) and not d.pending
