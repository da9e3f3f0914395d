"""ClockRate learns a clock's drift from jittery timestamps and is not fooled by steps;
the delayed playback plays at the learnt ratio, so a skewed input builds up no error
inside speech (the live check with a real skewed source is tests/test_drift.py)."""

from __future__ import annotations

import numpy as np
import pytest

from vcam_talker.audio.clockrate import ClockRate
from vcam_talker.audio.playback import DelayedPlayback
from vcam_talker.audio.ring import AudioRing


def feed(rate: ClockRate, drift: float, seconds: float, *, t0: float = 100.0, o0: float = 0.0,
         jitter: float = 0.002, block: float = 0.01, seed: int = 0) -> float:
    """Observations every ``block`` s of a clock drifting by ``drift``, with uniform
    timing jitter; returns the time after the last one."""
    rng = np.random.default_rng(seed)
    for k in range(int(seconds / block)):
        t = t0 + k * block
        rate.add(t + rng.uniform(-jitter, jitter), o0 + drift * (t - t0) + rng.uniform(-jitter, jitter))
    return t0 + seconds


@pytest.mark.parametrize("drift", [0.0, 300e-6, -300e-6, 0.005, -0.005, 0.009])
def test_learns_the_drift_through_jitter(drift):
    r = ClockRate()
    feed(r, drift, 12.0)
    assert r.learnt and abs(r.drift - drift) < 3e-5, r.drift
    assert r.ratio == pytest.approx(1.0 - r.drift)


def test_nothing_learnt_before_min_span():
    r = ClockRate()
    feed(r, 0.005, ClockRate.MIN_SPAN_S)  # the bins' centres span less than that
    assert not r.learnt and r.drift == 0.0


def test_a_step_is_not_drift():
    """An overflow that lost 50 ms, then more of the same clock: the estimate is not
    bent by the step, it is kept while the new segment is short, then relearnt."""
    r = ClockRate()
    t = feed(r, 0.002, 10.0)
    before = r.drift
    feed(r, 0.002, 2.0, t0=t, o0=0.002 * 10.0 + 0.05, seed=1)
    assert r.segments == 1 and abs(r.drift - before) < 3e-5  # kept while the new segment is short
    feed(r, 0.002, 10.0, t0=t + 2.0, o0=0.002 * 12.0 + 0.05, seed=2)
    assert r.segments == 1 and abs(r.drift - 0.002) < 3e-5, r.drift


def test_beyond_max_is_not_a_clock():
    r = ClockRate()
    feed(r, 0.03, 20.0, jitter=0.0)  # 30 ms a bin: every bin a step, and no fit anyway
    assert not r.learnt and r.drift == 0.0


@pytest.mark.parametrize("skew", [0.005, -0.005])
def test_playback_holds_the_delay_inside_speech_on_a_skewed_input(pulse_server, skew):
    """Offline: 24 s of "speech" (2 s of a tone, 0.4 s of silence, over and over) written
    into the ring in 10 ms blocks stamped by a clock 0.5 % fast or slow; render() with
    synthetic DAC times. Once learnt (after 8 s), the base speed is the clocks' ratio and
    the delay stays within 1.5 ms of the target all through each 2 s of tone; with the
    base held at 1 the error grows inside every tone (5 ms a second) until the pause
    splices it out."""
    sr, fs, block = 16000, 48000, 480
    t0, target = 50.0, 0.15
    n = int(24 * sr)
    tt = np.arange(n) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * tt) * ((tt % 2.4) < 2.0)).astype(np.float32)
    ring = AudioRing(sr, capacity_s=30)
    blk = sr // 100
    for i in range(0, n, blk):  # sample i captured at t0 + i / (sr × (1 + skew))
        ring.write(x[i:i + blk], t0 + i / (sr * (1.0 + skew)))

    def run(learn: bool) -> tuple[np.ndarray, DelayedPlayback]:
        pb = DelayedPlayback("vcam_mic_sink", ring, target_delay=target, samplerate=fs)
        if not learn:
            pb._base_speed = lambda *a: 1.0
        errs, dac = [], t0 + target + 0.5
        while dac < t0 + 22.0:
            pb.render(block, dac)
            errs.append((dac, pb.residual))
            dac += block / fs
        return np.array(errs), pb

    errs, pb = run(True)
    late = np.abs(errs[errs[:, 0] > t0 + 8.0, 1])
    st = pb.stats
    assert abs(st.clock_ratio - (1.0 + skew)) < 1e-4, st.clock_ratio
    assert late.max() < 0.0015, late.max()
    assert st.lost_samples == 0 and st.dry_blocks == 0
    errs, _ = run(False)  # the same without the learnt base: the error builds up in each tone
    unlearnt = np.abs(errs[errs[:, 0] > t0 + 8.0, 1])
    assert unlearnt.max() > 0.008 > 4 * late.max(), (unlearnt.max(), late.max())
