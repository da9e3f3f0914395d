"""DelayedPlayback waits for a late input block rather than play a gap inside a word.

After a stall of the whole process the output callbacks catch up first, a millisecond
before the capture worker writes its backlog (seen in a per-callback trace of the daemon
under bench_live --load 2). render() offline, with DAC times on the real clock."""

from __future__ import annotations

import threading
import time

import numpy as np

from vcam_talker.audio.playback import DelayedPlayback
from vcam_talker.audio.ring import AudioRing

SR = 16000


def _speech_ring(seconds: float) -> tuple[AudioRing, np.ndarray, float]:
    t = np.arange(int(seconds * SR)) / SR
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # loud throughout: no splice
    ring = AudioRing(SR, capacity_s=30)
    return ring, x, time.monotonic() - seconds


def _playing(ring: AudioRing, x: np.ndarray, t0: float, have_s: float) -> tuple[DelayedPlayback, float]:
    """A playback 0.15 s behind, already playing, with the ring written up to ``have_s``."""
    ring.write(x[: int(have_s * SR)], t0)
    pb = DelayedPlayback("vcam_mic_sink", ring, target_delay=0.15, samplerate=48000)
    dac = t0 + have_s + 0.15 - 0.5  # half a second of audio left to play
    for _ in range(40):
        pb.render(480, dac)
        dac += 0.01
    return pb, dac


def _drain(pb: DelayedPlayback, ring: AudioRing, dac: float, leave_s: float = 0.0) -> float:
    """Play until at most ``leave_s`` of written input is left; returns the next DAC time."""
    while ring.end - pb.position > leave_s * SR:
        pb.render(480, dac)
        dac += 0.01
    return dac


def test_a_block_not_yet_due_waits_for_the_late_input(pulse_server):
    ring, x, t0 = _speech_ring(2.0)
    pb, dac = _playing(ring, x, t0, 1.0)
    _drain(pb, ring, dac, 0.02)  # up to the ring's end; the next block's input is not written yet
    before = pb.stats
    pb.DRY_WAIT_S = 0.5  # a loaded machine may run the writer late; the cap is tested below
    late = threading.Timer(0.004, lambda: ring.write(x[int(1.0 * SR):], t0 + 1.0))
    t = time.monotonic()
    late.start()
    out = np.concatenate([pb.render(480, time.monotonic() + 0.08) for _ in range(3)])  # 60 ms to wait
    waited = time.monotonic() - t
    late.join()
    st = pb.stats
    print(f"\nwaited {waited * 1e3:.1f} ms; starved {st.starved_frames - before.starved_frames} frames, "
          f"dry waits {st.dry_waits - before.dry_waits}")
    assert st.dry_waits - before.dry_waits == 1
    assert st.starved_frames == before.starved_frames and st.dry_blocks == before.dry_blocks
    assert 0.004 <= waited < 0.06  # the wait ends when the block is written, not at the budget
    assert np.sqrt(np.mean(out[-480:] ** 2)) > 0.1  # the late speech played, not a gap


def test_a_block_due_now_does_not_wait_and_plays_the_gap(pulse_server):
    ring, x, t0 = _speech_ring(2.0)
    pb, dac = _playing(ring, x, t0, 1.0)
    _drain(pb, ring, dac)
    before = pb.stats
    t = time.monotonic()
    pb.render(480, time.monotonic() + DelayedPlayback.DRY_MARGIN_S / 2)  # the buffer is nearly empty
    waited = time.monotonic() - t
    st = pb.stats
    assert waited < 0.003, waited
    assert st.dry_waits == before.dry_waits and st.starved_frames > before.starved_frames


def test_the_wait_is_capped(pulse_server):
    ring, x, t0 = _speech_ring(2.0)
    pb, dac = _playing(ring, x, t0, 1.0)
    _drain(pb, ring, dac)
    t = time.monotonic()
    pb.render(480, time.monotonic() + 1.0)  # the input never comes
    waited = time.monotonic() - t
    assert DelayedPlayback.DRY_WAIT_S * 0.9 <= waited < DelayedPlayback.DRY_WAIT_S + 0.01, waited
    assert pb.stats.dry_waits == 0
