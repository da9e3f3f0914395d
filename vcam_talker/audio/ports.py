"""The daemon's two audio ends: the input (a device, the demo loop, or silence while the
device is away) and the delayed mic. Devices are parts of the :class:`Supervisor`: it
opens them, watches them through the probes here, and reopens them on its backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vcam_talker.config import AudioConfig
from vcam_talker.supervisor import STALL_S, Part, Progress, Supervisor, warn_bad_samples

log = logging.getLogger("vcam_talker.daemon")

#: playback counters that status sums over reopens of the output
LIFETIME_COUNTERS = ("inserted_frames", "removed_samples", "underflows", "lost_samples", "resyncs", "dry_blocks",
                     "hiccups", "dry_waits")

DEMO_SPEECH = Path(__file__).resolve().parents[1] / "data" / "demo_speech.wav"


class AudioPorts:
    """``audio_delay()`` is the capture-to-mic delay the playback aims for (the daemon's)."""

    def __init__(self, ring, supervisor: Supervisor, audio_delay: Callable[[], float]):
        self.ring, self.supervisor, self.audio_delay = ring, supervisor, audio_delay
        self.cfg = AudioConfig()
        self.demo = None  # the demo loop, when the input is the demo
        self.capture = None  # the input device, while it is open
        self.filler = None  # silence while the input device is away
        self.playback = None  # the delayed mic, while it is open
        self.helper = None  # the process both devices run in (audio.helper), once started
        self.retired: dict[str, int] = {}  # counters of the playbacks closed so far (reopens)
        self._input_progress = Progress()
        self._output_progress = Progress()
        self._bad_samples = (0, -1e9)  # (reported, when)
        self._stopping = False

    # ---- input -------------------------------------------------------------------------
    def start_input(self, cfg: AudioConfig, demo: bool) -> None:
        self.cfg = cfg
        if demo:
            import soundfile as sf

            from vcam_talker.audio.demo import LoopingSource

            clip, rate = sf.read(str(DEMO_SPEECH), dtype="float32")
            if rate != self.ring.sample_rate:
                import soxr

                clip = soxr.resample(clip, rate, self.ring.sample_rate)
            self.demo = LoopingSource(self.ring, clip, block_ms=cfg.block_ms)
            self.demo.start()
            return
        self.supervisor.add(Part(
            name="input", label="audio input", open=self._open_capture, close=self._close_capture,
            probe=self._probe_input, on_down=self._fill_silence,
            msg_unavailable="{label}: {why}; retrying, showing the idle animation meanwhile",
            msg_lost="{label} lost ({why}); retrying, showing the idle animation meanwhile",
            msg_back="{label} back after {retries} retries ({down:.1f} s down)"), time.monotonic())

    def stop_input(self) -> None:
        self.supervisor.remove("input")
        for part in (self.demo, self.filler):
            if part is not None:
                stop_quietly(part)
        self.demo = self.filler = None

    def _open_capture(self) -> None:
        from vcam_talker.audio.capture import AudioCapture
        from vcam_talker.audio.routing import route_device

        if self.filler is not None:
            stop_quietly(self.filler)
            self.filler = None
        if self._use_helper():
            from vcam_talker.audio.helper import RemoteCapture

            cap = RemoteCapture(self._helper(), self.cfg.input, {"block_ms": self.cfg.block_ms})
        else:
            cap = AudioCapture(route_device(self.cfg.input, "input"), self.ring, block_ms=self.cfg.block_ms)
        cap.start()
        self.capture = cap
        self.input_opened_at = time.monotonic()  # the daemon re-measures its delay after this
        self._input_progress.restart(time.monotonic())

    def _close_capture(self) -> None:
        if self.capture is not None:
            stop_quietly(self.capture)
            self.capture = None

    def _probe_input(self, now: float) -> str:
        cap = self.capture
        if cap is None:
            return "closed"
        reported, logged_at = self._bad_samples
        bad = cap.stats.nan_samples  # zeroed by the capture; said at most once a minute
        if warn_bad_samples(bad, reported, logged_at, now):
            log.warning("audio input: %d NaN or infinite samples so far, replaced with silence; "
                        "the source device or driver is faulty", bad)
            self._bad_samples = (bad, now)
        if cap.error is not None:
            return str(cap.error)
        if self._input_progress.look(self.ring.end, now) > STALL_S:
            return f"no audio for {STALL_S:.1f} s"
        return ""

    def _fill_silence(self) -> None:
        """Keep the clock going with silence, so frames keep coming (idle animation)."""
        from vcam_talker.audio.demo import LoopingSource

        if self.filler is None:
            self.filler = LoopingSource(self.ring, np.zeros(self.ring.sample_rate // 10, np.float32),
                                        block_ms=self.cfg.block_ms, gap_s=0.0, name="vcam-silence")
            self.filler.start()

    # ---- output ------------------------------------------------------------------------
    def start_output(self, cfg: AudioConfig) -> None:
        self.cfg = cfg
        if cfg.output == "none":
            return
        self.supervisor.add(Part(
            name="output", label="audio output", open=self._open_playback, close=self._close_playback,
            probe=self._probe_output, msg_unavailable="{label}: {why}; retrying, capture and video go on",
            msg_lost="{label} lost ({why}); retrying",
            msg_back="{label} back after {retries} retries ({down:.1f} s down)"), time.monotonic())

    def stop_output(self) -> None:
        self.supervisor.remove("output")

    def _open_playback(self) -> None:
        from vcam_talker.audio.headroom import output_latency
        from vcam_talker.audio.playback import DelayedPlayback
        from vcam_talker.audio.routing import route_device

        delay = self.audio_delay()
        if self._use_helper():
            from vcam_talker.audio.helper import RemotePlayback

            pb = RemotePlayback(self._helper(), self.cfg.output, {"target_delay": delay, "latency": output_latency(delay)})
        else:
            pb = DelayedPlayback(route_device(self.cfg.output, "output"), self.ring, target_delay=delay,
                                 latency=output_latency(delay))
        pb.start()
        self.playback = pb
        self._output_progress.restart(time.monotonic())

    def _close_playback(self) -> None:
        if self.playback is not None:
            st = self.playback.stats  # before the stop: the helper forgets a closed stream
            stop_quietly(self.playback)
            if not self._stopping:  # at exit it stays: the last status line reports on it
                for key in LIFETIME_COUNTERS:
                    self.retired[key] = self.retired.get(key, 0) + getattr(st, key)
                self.playback = None

    def _probe_output(self, now: float) -> str:
        pb = self.playback
        if pb is None:
            return "closed"
        if pb.error is not None:
            return str(pb.error)
        if self._output_progress.look(pb.stats.callbacks, now) > STALL_S:
            return "the device stopped"
        return ""

    def playback_totals(self, st) -> dict[str, int]:
        """The counters of ``st`` (the open playback's stats) plus those of the playbacks
        closed before it: status reports counts over the daemon's life, not per reopen."""
        return {key: getattr(st, key) + self.retired.get(key, 0) for key in LIFETIME_COUNTERS}

    # ---- both --------------------------------------------------------------------------
    def _use_helper(self) -> bool:
        return self.cfg.helper and getattr(self.ring, "fd", None) is not None

    def _helper(self):
        """The audio helper process (audio/helper.py), started with the first device."""
        from vcam_talker.audio import realtime

        if self.helper is None:
            from vcam_talker.audio.helper import AudioHelper

            self.helper = AudioHelper(self.ring)
        self.helper.realtime = realtime.PRIORITY if self.cfg.realtime else 0
        return self.helper

    def after_stall(self, now: float) -> None:
        """The whole process was stopped (SIGSTOP, suspend): the devices were silent
        because we were, so their stall clocks restart from now."""
        self._input_progress.restart(now)
        self._output_progress.restart(now)

    def stop(self) -> None:
        """The demo loop and the silence filler; the devices close with the supervisor."""
        self._stopping = True
        for part in (self.demo, self.filler):
            if part is not None:
                stop_quietly(part)

    def close_helper(self) -> None:
        """After the devices closed: the helper process ends."""
        if self.helper is not None:
            self.helper.close()


def stop_quietly(part) -> None:
    try:
        part.stop()
    except Exception as exc:
        log.warning("stopping %s: %s", type(part).__name__, exc)
