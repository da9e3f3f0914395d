"""Counters of the live audio stages, as snapshot dataclasses: :class:`CaptureStats` of
the capture, :class:`PlaybackStats` of the delayed playback (read by the status and metrics)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CaptureStats:
    """Counters of an :class:`AudioCapture` (a snapshot).

    nan_samples / clipped_samples: device samples zeroed / clipped by :func:`sanitize`.
    overflows: input overflows reported by PortAudio plus blocks dropped because the
        worker fell behind (those are replaced by silence to keep the clock).
    blocks: device blocks processed.
    jitter_s: how much later than the best (lower-envelope) estimate the last block
        arrived; grows when the machine is loaded.
    device_latency_s: the input latency PortAudio reports for the stream.
    timestamps: "adc" or "callback", where the capture times come from.
    errors: blocks whose processing failed (skipped; the worker carries on).
    """

    nan_samples: int = 0
    clipped_samples: int = 0
    overflows: int = 0
    blocks: int = 0
    jitter_s: float = float("nan")
    device_latency_s: float = float("nan")
    timestamps: str = "callback"
    errors: int = 0


@dataclass
class PlaybackStats:
    """Counters of a :class:`DelayedPlayback` (a snapshot).

    underflows: output underflows reported by PortAudio (the callback came too late).
    starved_frames: device frames of silence played because the ring had no samples yet.
    inserted_frames: device frames of silence inserted to lengthen the delay.
    removed_samples: ring samples of silence skipped to shorten the delay.
    lost_samples: ring samples overwritten before they could be played (delay > capacity).
    callbacks: PortAudio callbacks served.
    speed: current resampling speed (1.0 = none; 1.01 plays 1 % faster).
    device_latency_s: time from a callback to its first frame at the DAC.
    errors: callbacks that failed (they played silence); see DelayedPlayback.error.
    resyncs: jumps to the target after a stall (their samples count in lost_samples).
    dry_blocks: blocks, once playing, that found the ring short (the input came later
        than the delay allows).
    hiccups: dry blocks and underflows after the first 2 s of playing: scheduling
        hiccups the daemon answers with more headroom (vcam_talker/audio/headroom.py).
    latency_s: the PortAudio output latency the stream was opened with.
    dry_waits: blocks that found the ring short but waited (while not yet due) and got
        the input: after a stall of the process, see DelayedPlayback.DRY_WAIT_S.
    clock_ratio: the input clock's rate against the system clock, as learnt
        (clockrate.py): the base of ``speed`` (1.005: the input delivers 0.5 % more
        samples a second).
    """

    underflows: int = 0
    starved_frames: int = 0
    inserted_frames: int = 0
    removed_samples: int = 0
    lost_samples: int = 0
    callbacks: int = 0
    speed: float = 1.0
    device_latency_s: float = float("nan")
    errors: int = 0
    resyncs: int = 0
    dry_blocks: int = 0
    hiccups: int = 0
    latency_s: float = float("nan")
    dry_waits: int = 0
    clock_ratio: float = 1.0
