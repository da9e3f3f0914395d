"""Audio headroom: how much the shared delay must exceed what the video needs, so that
the delayed mic stays whole on a busy machine.

The delay D is what the video pipeline needs (DelayEstimator). The audio needs, inside
D, room for the input to arrive late and for the output buffer to be refilled late. On a
quiet machine the video's figure leaves enough; when the CPU is saturated, blocks of the
input arrive tens of milliseconds late and the playback finds the ring dry (it would play
a gap inside a word), or the output buffer drains before the next refill (an underrun:
a gap too). Each second with such a hiccup raises the headroom by STEP_S, up to MAX_S,
and a quarter of an hour without one lets it sink by DECAY_S a second. The headroom is
added to the delay, so the picture waits as long as the voice: video degrades (a later
picture), the voice stays whole. Pure functions; the daemon's frame tick executes them.

The output buffer (PortAudio's latency) is sized from the delay when the output opens
(:func:`output_latency`); once the delay has grown enough that a bigger buffer fits,
the output is reopened with it in a pause of the speech (:func:`reopen_wanted`).
"""

from __future__ import annotations

from dataclasses import dataclass

STEP_S = 0.02
MAX_S = 0.2
DECAY_S = 0.001
CALM_S = 900.0


@dataclass(frozen=True)
class Headroom:
    extra_s: float = 0.0
    seen: int = 0  # the playback's hiccups counter when last looked at
    last_raise: float = -1e18
    raises: int = 0


#: hiccups this long (s) after the process itself stalled (suspend, SIGSTOP) are the
#: stall's: the output drained while nothing ran, which says nothing about the machine
STALL_GRACE_S = 5.0


def step(h: Headroom, hiccups: int, now: float, resumed_at: float = -1e18) -> Headroom:
    """The headroom after one look (about once a second) at the playback's counter;
    ``resumed_at``: when the process last came back from a stall of its own."""
    if hiccups < h.seen or now - resumed_at < STALL_GRACE_S:  # a new playback, or the stall's
        return Headroom(h.extra_s, hiccups, h.last_raise, h.raises)
    if hiccups > h.seen:
        extra = min(MAX_S, h.extra_s + STEP_S)
        return Headroom(extra, hiccups, now if extra > h.extra_s else h.last_raise, h.raises + (extra > h.extra_s))
    if h.extra_s > 0 and now - h.last_raise >= CALM_S:
        return Headroom(max(0.0, h.extra_s - DECAY_S), hiccups, h.last_raise, h.raises)
    return h


def reopen_wanted(open_latency_s: float, delay_s: float) -> bool:
    """True when the output, opened with ``open_latency_s``, should be reopened with the
    buffer the delay now allows: only when that is 10 ms more (a reopen costs a pause)."""
    return output_latency(delay_s) >= open_latency_s + 0.01


def output_latency(delay_s: float, arrival_s: float = 0.03) -> float:
    """PortAudio output latency (s) for a stream opened while the delay is ``delay_s``.

    A late refill longer than the output buffer is an underrun (a gap); an input block
    later than the rest of the delay is a dry ring (a gap too). Both come from the same
    scheduling hiccups, so the part of the delay not needed for the input's normal
    ``arrival_s`` is split evenly. PulseAudio and PipeWire round it up by about a third:
    0.05 gives 70 ms, 0.08 gives 110 ms (measured with a null sink)."""
    return min(0.2, max(0.05, 0.5 * (delay_s - arrival_s) / 1.35))
