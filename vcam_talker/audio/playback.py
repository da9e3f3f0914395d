"""Delayed playback: every ring sample, in order, into an output device, late by a target.

Sample ``i`` should leave the DAC at ``ring.time_of(i) + target_delay + trim_s``, so the
meeting hears the voice exactly as late as the video shows it. Each PortAudio callback
knows when its first frame reaches the DAC (``outputBufferDacTime``, mapped to
time.monotonic) and which ring position it plays, so the delay is measured every block
and corrected:

* in silence (peak below ``silence_db`` around the splice), silent samples are inserted
  or skipped: exact, inaudible, and fast;
* in speech, when the error is above 15 ms or no silence came for 2 s, the resampler
  runs up to ``max_stretch`` (1.5 %) faster or slower; no sample is ever dropped.

Its base speed is the input clock's rate (clockrate.py, learnt from the ring's capture
times), so a drift of the input builds up no error inside an utterance.

The work is done in the callback itself (a few hundred microseconds per block): a
separate thread and FIFO would add latency and blur which sample is playing when.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np

from vcam_talker.audio.capture import close_stream, import_sounddevice, pick_channels, pick_rate, resolve_device
from vcam_talker.audio.clockrate import ClockRate
from vcam_talker.audio.dsp import StreamResampler
from vcam_talker.audio.ring import AudioRing
from vcam_talker.audio.splice import ring_peak, silent_around, silent_run
from vcam_talker.audio.stats import PlaybackStats
from vcam_talker.errors import DeviceError

log = logging.getLogger(__name__)


class DelayedPlayback:
    """Plays ``ring`` into ``device`` so that each sample is heard a set delay after capture.

    Args:
        device: PortAudio output device index, a part of its name (e.g. 'vcam_mic_sink',
            'pulse'), or None for the default output.
        ring: the AudioRing to play (every sample, in order).
        target_delay: initial delay (s) from capture to DAC; see :meth:`set_target_delay`.
        trim_s: manual offset (s) added to the target (positive: later audio).
        block_ms: PortAudio block length.
        samplerate: device rate; None picks 48 kHz if accepted, else the device default.
        channels: None: mono if the device accepts it, else stereo (same signal).
        latency: PortAudio's suggested output latency; generous is fine, since it is
            part of the measured delay and only bounds the smallest reachable one.
        silence_db: peak level (dBFS) below which audio counts as silence for splicing.
        max_stretch: largest speed change while correcting during speech (0.015 = 1.5 %).
        start_index: ring index to start at; None starts at the index that meets the
            target delay right away.

    Raises DeviceError (one line) when the device is missing or cannot be opened.
    """

    #: a delay this much (s) above the target is a stall to jump over, not an error to glide out
    RESYNC_S = 1.0
    #: After the whole process stalled (the CPU saturated, the GIL with a descheduled
    #: thread), PortAudio's output callbacks catch up in a burst, often a millisecond
    #: before the capture worker writes its own backlog: a block due tens of ms later
    #: found the ring dry and played a gap inside a word. It now waits for the input, up
    #: to DRY_WAIT_S and only while DRY_MARGIN_S of the block's lead time is left (the
    #: output buffer still holds that much); the wait releases the GIL.
    DRY_WAIT_S = 0.01
    DRY_MARGIN_S = 0.02

    def __init__(self, device: int | str | None, ring: AudioRing, *, target_delay: float = 0.15,
                 trim_s: float = 0.0, block_ms: float = 10.0, samplerate: float | None = None,
                 channels: int | None = None, latency: str | float = 0.05, silence_db: float = -45.0,
                 max_stretch: float = 0.015, start_index: int | None = None):
        self._sd = import_sounddevice()
        self.device = device
        self.ring = ring
        self.info = resolve_device(device, "output")
        self.device_rate = pick_rate(self._sd, self.info, "output", samplerate)
        self.channels = pick_channels(self._sd, self.info, "output", self.device_rate, channels)
        self.blocksize = max(1, int(round(block_ms * self.device_rate / 1000)))
        self.latency = latency
        self.target_delay = float(target_delay)
        self.trim_s = float(trim_s)
        self.max_stretch = float(max_stretch)
        self.silence = 10.0 ** (silence_db / 20.0)
        self.start_index = start_index
        # Controller tuning. The delay estimate is an EMA over ~10 blocks; splices act
        # beyond 2 ms of error, stretching beyond 4 ms and settles within 0.5 ms.
        self._alpha = 0.1
        self._splice_tol = 0.002
        self._stretch_on, self._stretch_off = 0.004, 0.0005
        # An error up to 15 ms waits up to 2 s for silence to splice in (nobody hears a
        # splice, and a pitch change in speech is audible to some); beyond either, stretch.
        self._stretch_now, self._wait_for_silence_s = 0.015, 2.0
        self._stretch_tau = 0.5  # s: the speed offset is residual / tau, capped
        self._max_slew = 0.001  # speed change per block: a glide, not a jump
        # Silence needed on each side of a splice: 30 ms keeps splices out of the
        # closures of stop consonants (silent too, but inside words).
        self._margin = int(0.03 * ring.sample_rate)
        self._stream = None
        self._stats = PlaybackStats()
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._rs: StreamResampler | None = None
        self._est: float | None = None
        self._pred: float | None = None
        self._stretching = False
        self._off_since: float | None = None  # dac time since when the error exceeds _stretch_on
        self._dev_latency: float | None = None
        self._untimed = 0
        self._jumps = 0
        self._t_first = float("inf")
        self._clock_in = ClockRate()  # the input's clock, from the ring's capture times

    # -- control -----------------------------------------------------------------------

    def set_target_delay(self, seconds: float) -> None:
        """Set the wanted capture-to-DAC delay (s), e.g. the measured video latency.

        The playback glides there: splicing silence when there is some, otherwise
        stretching by at most ``max_stretch``.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"target delay must be a finite number >= 0, got {seconds}")
        self.target_delay = float(seconds)

    @property
    def target(self) -> float:
        """The effective target: target_delay + trim_s."""
        return self.target_delay + self.trim_s

    @property
    def current_delay(self) -> float:
        """Measured capture-to-DAC delay (s) of the samples playing now (smoothed); NaN
        before the first block."""
        est = self._est
        return float("nan") if est is None else est

    @property
    def residual(self) -> float:
        """current_delay - target (s): positive means the audio is later than wanted."""
        return self.current_delay - self.target

    @property
    def position(self) -> float:
        """Ring index of the next sample to play (NaN before the first block)."""
        rs = self._rs
        return float("nan") if rs is None else rs.position

    def in_pause(self, ahead_s: float = 0.06) -> bool:
        """True when what plays next (the splice margin before the play position to
        ``ahead_s`` after it) is silence: a target change made now is spliced in at once,
        exactly and inaudibly, instead of stretching speech. With ``ahead_s`` None: all
        that the ring holds beyond the play position, at least 150 ms (a pause long enough
        to reopen the stream in)."""
        rs = self._rs
        if rs is None:
            return True
        p = int(math.floor(rs.position))
        h = rs.half_taps + self._margin
        if ahead_s is None:
            end = self.ring.end
            if end - p < int(0.15 * self.ring.sample_rate):
                return False
            peak = ring_peak(self.ring, p - h, end)
        else:
            peak = ring_peak(self.ring, p - h, p + int(ahead_s * self.ring.sample_rate) + h)
        return peak is not None and peak < self.silence

    #: test sync (vcam_talker/web/syncprobe.py): see mark_click
    _click = None

    def mark_click(self, click) -> None:
        """Test sync: ``click.apply(out, first, n, p0, p1, dac_time, rate)`` is called on each
        output block (out[first:first + n] plays ring positions p0..p1) to add a click where
        a marked ring sample plays and note its DAC time; None stops it."""
        self._click = click

    def poll_clicks(self) -> None:
        """Test sync: the marks' DAC times are current (they are set right here; the
        helper's proxy fetches them)."""

    @property
    def stats(self) -> PlaybackStats:
        """A snapshot of the counters."""
        with self._lock:
            return PlaybackStats(**vars(self._stats))

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> DelayedPlayback:
        """Open and start the output stream."""
        if self._stream is not None:
            return self
        sd = self._sd
        self._reset_state()
        try:
            self._stream = sd.OutputStream(device=self.info["index"], samplerate=self.device_rate,
                                           channels=self.channels, dtype="float32", blocksize=self.blocksize,
                                           latency=self.latency, callback=self._callback)
            self._stream.start()
            with self._lock:
                self._stats.latency_s = float(self.latency) if not isinstance(self.latency, str) else float("nan")
        except (sd.PortAudioError, ValueError) as exc:
            self._stream = None
            raise DeviceError(f"cannot open output device {self.info['name']!r}: {exc}") from None
        return self

    def stop(self) -> None:
        """Stop and close the output stream (returns within a few ms)."""
        stream, self._stream = self._stream, None
        close_stream(stream, "output")

    def __enter__(self) -> DelayedPlayback:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- real-time side ------------------------------------------------------------------

    def _callback(self, outdata, frames, time_info, status) -> None:
        now = time.monotonic()
        try:
            lat = time_info.outputBufferDacTime - time_info.currentTime
            if time_info.currentTime > 0 and 0 < lat < 2.0:
                self._dev_latency = lat
            elif self._dev_latency is None:
                # The first callbacks often carry no DAC time. Starting on a guess would
                # put the first samples off by tens of ms, so wait a few blocks for a
                # real one before trusting the stream's nominal latency.
                self._untimed += 1
                if self._untimed <= 10:
                    outdata[:] = 0
                    return
                self._dev_latency = float(self._stream.latency) if self._stream is not None else 0.0
            y = self.render(frames, now + self._dev_latency)
        except Exception as exc:  # never let the device thread die: play silence
            y = np.zeros(frames, np.float32)
            with self._lock:
                self._stats.errors += 1
            if self.error is None:
                log.exception("playback callback failed")
            self.error = exc
        outdata[:] = y[:, None]
        with self._lock:
            s = self._stats
            s.callbacks += 1
            s.underflows += int(bool(status.output_underflow))
            s.hiccups += int(bool(status.output_underflow) and now - self._t_first > 2.0)
            s.device_latency_s = self._dev_latency if self._dev_latency is not None else float("nan")

    def render(self, frames: int, dac_time: float) -> np.ndarray:
        """The next ``frames`` device samples, whose first one reaches the DAC at
        ``dac_time`` (monotonic). Called by the stream callback; public so the
        controller can be exercised without a device."""
        ring = self.ring
        out = np.zeros(frames, np.float32)
        if self._rs is None:
            if ring.end == 0:
                self._count(starved=frames)
                return out
            p0 = self.start_index if self.start_index is not None else ring.index_at(dac_time - self.target)
            if ring.start > 0:  # wrapped: start where the filter's left context is still held
                p0 = max(float(p0), ring.start + 2 * self._margin + 64)
            self._rs = StreamResampler(ring.sample_rate, self.device_rate, start=p0)
            self._t_first = dac_time
        rs = self._rs
        self._catch_up_overwritten(rs)
        target = self.target
        p_before = rs.position
        t_in = ring.time_of(p_before)
        measured = dac_time - t_in
        base = self._base_speed(t_in, p_before)
        if measured - target > self.RESYNC_S:
            # after a stall (suspend, SIGSTOP) the delay is seconds too long: gliding back
            # at 1.5 % would take minutes, so jump to the sample due now and count the loss
            jump = min(ring.index_at(dac_time - target), ring.end) - p_before
            if jump > 0:
                rs.skip(jump)
                self._count(lost=int(jump))
                self._pred, self._jumps = None, 0
                with self._lock:
                    self._stats.resyncs += 1
                p_before = rs.position
                measured = dac_time - ring.time_of(p_before)
        # Predictor-corrector: the prediction knows what the last block did (speed,
        # splices), so the smoothing does not lag behind deliberate changes.
        if self._pred is not None and abs(measured - self._pred) > 0.01:
            self._jumps += 1  # three blocks in a row off by > 10 ms: a real step, follow it
        else:
            self._jumps = 0
        if self._pred is None or self._jumps >= 3:
            d0 = measured
        else:
            d0 = self._pred + self._alpha * (measured - self._pred)
        est = d0  # the delay the next sample played will have
        residual = est - target

        filled = 0
        spliced = False
        guard = rs.half_taps + self._margin  # silence needed each side of a splice
        if residual < -self._splice_tol and silent_around(ring, p_before, guard, self.silence):
            filled = min(frames, int(round(-residual * self.device_rate)))
            est += filled / self.device_rate
            spliced = True
            self._count(inserted=filled)
        elif residual > self._splice_tol:
            run = silent_run(ring, p_before, int(residual * ring.sample_rate), guard, self.silence)
            if run > 0:
                rs.skip(run)
                est -= run / ring.sample_rate
                spliced = True
                self._count(removed=run)
        residual = est - target

        # Stretch for what silence cannot fix (none while splicing), with hysteresis and
        # a slew limit so the speed glides.
        if abs(residual) <= self._stretch_on:
            self._off_since = None
        elif self._off_since is None:
            self._off_since = dac_time
        waited = self._off_since is not None and dac_time - self._off_since >= self._wait_for_silence_s
        if spliced or abs(residual) < self._stretch_off:
            self._stretching = False
        elif abs(residual) > self._stretch_now or (abs(residual) > self._stretch_on and waited):
            self._stretching = True
        want = 1.0 + float(np.clip(residual / self._stretch_tau, -self.max_stretch, self.max_stretch)) \
            if self._stretching else 1.0
        want += base - 1.0
        if spliced:  # in silence a speed step is inaudible
            rs.speed = base
        else:
            rs.speed += float(np.clip(want - rs.speed, -self._max_slew, self._max_slew))

        n = frames - filled
        need = rs.input_needed(n)
        start = rs.next_input_index
        if ring.end < start + need:
            budget = min(self.DRY_WAIT_S, dac_time - time.monotonic() - self.DRY_MARGIN_S)
            if budget > 0 and ring.wait_for(start + need, timeout=budget):
                with self._lock:
                    self._stats.dry_waits += 1
        have = max(0, min(need, ring.end - start))
        p_out = rs.position  # the ring position out[filled] plays (test sync's click needs it)
        # a position past the ring's end (a stream opened while no input came) reads nothing
        y = rs.process(ring.read(start, have) if have else np.zeros(0, np.float32), max_out=n)
        out[filled:filled + len(y)] = y
        if (click := self._click) is not None:  # test sync: a click where a marked ring sample plays
            click.apply(out, filled, len(y), p_out, rs.position, dac_time, self.device_rate)
        if len(y) < n:  # the ring ran dry: silence, and the delay grows accordingly
            self._count(starved=n - len(y))
            if dac_time - self._t_first > 2.0:  # the start's guess of the delay is no hiccup
                with self._lock:
                    self._stats.dry_blocks += 1
                    self._stats.hiccups += 1
        self._est = est
        self._pred = d0 + frames / self.device_rate - (rs.position - p_before) / ring.sample_rate
        with self._lock:
            self._stats.speed = rs.speed
            self._stats.clock_ratio = base
        np.clip(out, -1.0, 1.0, out=out)
        return out

    # -- helpers -------------------------------------------------------------------------

    def _base_speed(self, t_in: float, p: float) -> float:
        """The speed that keeps the delay as it is: ring samples arrive at the input
        clock's rate against time.monotonic (``t_in``: capture time of ring position
        ``p``). The output is taken to run at its nominal rate: the virtual sinks this
        plays into run on the system clock, and its DAC times, as PortAudio reports them
        through PulseAudio, showed trends of 500 ppm for many seconds under load that the
        sink's clock did not have (learning them bent the voice of a clean stream)."""
        self._clock_in.add(t_in, t_in - p / self.ring.sample_rate)
        return self._clock_in.ratio

    def _count(self, *, starved: int = 0, inserted: int = 0, removed: int = 0, lost: int = 0) -> None:
        with self._lock:
            s = self._stats
            s.starved_frames += starved
            s.inserted_frames += inserted
            s.removed_samples += removed
            s.lost_samples += lost

    def _catch_up_overwritten(self, rs: StreamResampler) -> None:
        """If the ring overwrote what is due next, jump to the oldest sample it holds."""
        oldest = self.ring.start
        if oldest > 0 and (rs.next_input_index < oldest or rs.position - rs.half_taps < oldest):
            jump = oldest + 2 * self._margin + rs.half_taps - rs.position
            if jump > 0:
                rs.skip(jump)
                self._count(lost=int(jump))
