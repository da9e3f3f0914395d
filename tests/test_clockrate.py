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
    feed(r, drift, 16.0)
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
    t = feed(r, 0.002, 14.0)
    before = r.drift
    feed(r, 0.002, 2.0, t0=t, o0=0.002 * 14.0 + 0.05, seed=1)
    assert r.segments == 1 and abs(r.drift - before) < 3e-5  # kept while the new segment is short
    feed(r, 0.002, 12.0, t0=t + 2.0, o0=0.002 * 16.0 + 0.05, seed=2)
    assert r.segments == 1 and abs(r.drift - 0.002) < 3e-5, r.drift


def test_beyond_max_is_not_a_clock():
    r = ClockRate()
    feed(r, 0.03, 20.0, jitter=0.0)  # 30 ms a bin: every bin a step, and no fit anyway
    assert not r.learnt and r.drift == 0.0


@pytest.mark.parametrize("skew,dac_drift", [(0.005, 0.0), (-0.005, 0.0), (0.0, -550e-6)],
                         ids=["input-fast", "input-slow", "dac-times-trend"])
def test_playback_holds_the_delay_inside_speech_on_a_skewed_input(pulse_server, skew, dac_drift):
    """Offline: 36 s of "speech" (2 s of a tone, 0.4 s of silence, over and over) written
    into the ring in 10 ms blocks stamped by a clock 0.5 % fast or slow; render() with
    synthetic DAC times. Once learnt (after 12 s), the base speed is the input clock's
    rate and the delay error no longer moves (by under 1 ms; what is left sits inside the
    controller's dead band of 2 ms); with the base held at 1 the error grows inside every
    tone (5 ms a second) until the pause splices it out. DAC times that trend by 550 ppm against a true input (seen
    through PulseAudio under load, not a clock) leave the base at 1."""
    sr, fs, block = 16000, 48000, 480
    t0, target = 50.0, 0.15
    n = int(38 * sr)
    tt = np.arange(n) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * tt) * ((tt % 2.4) < 2.0)).astype(np.float32)
    ring = AudioRing(sr, capacity_s=40)
    blk = sr // 100
    for i in range(0, n, blk):  # sample i captured at t0 + i / (sr × (1 + skew))
        ring.write(x[i:i + blk], t0 + i / (sr * (1.0 + skew)))

    def run(learn: bool) -> tuple[np.ndarray, DelayedPlayback]:
        pb = DelayedPlayback("vcam_mic_sink", ring, target_delay=target, samplerate=fs)
        if not learn:
            pb._base_speed = lambda *a: 1.0
        errs, dac = [], t0 + target + 0.5
        while dac < t0 + 36.0:
            pb.render(block, dac)
            errs.append((dac, pb.residual))
            dac += block / fs * (1.0 + dac_drift)
        return np.array(errs), pb

    errs, pb = run(True)
    late = errs[errs[:, 0] > t0 + 12.0, 1]
    st = pb.stats
    assert abs(st.clock_ratio - (1.0 + skew)) < 1e-4, st.clock_ratio
    assert st.lost_samples == 0 and st.dry_blocks == 0
    if dac_drift:
        return
    assert np.ptp(late) < 0.001 and np.abs(late).max() < 0.0025, (np.ptp(late), np.abs(late).max())
    errs, _ = run(False)  # the same without the learnt base: the error builds up in each tone
    unlearnt = errs[errs[:, 0] > t0 + 12.0, 1]
    assert np.ptp(unlearnt) > 0.008, np.ptp(unlearnt)
