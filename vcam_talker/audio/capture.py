"""Live audio capture: a sounddevice InputStream feeding an :class:`AudioRing`.

The PortAudio callback only copies each block and its timestamps into a small bounded
queue; the worker thread "vcam-capture" downmixes, sanitises, resamples to the ring's
rate and writes to the ring. The pure steps (:func:`downmix`, :func:`sanitize`,
:class:`StreamResampler`) work on plain arrays; they live in :mod:`vcam_talker.audio.dsp`.

Timestamps (``timestamps=``): "callback" (default) takes a block's arrival time minus its
duration; "adc" takes PortAudio's ``inputBufferAdcTime`` (mapped to time.monotonic via
the callback's clock offset); "auto" takes the ADC time when it is physically plausible,
else the arrival time. Through ALSA's pulse plugin, how PortAudio reaches PulseAudio or
PipeWire on Debian, the ADC time is wrong: measured against the DAC times of clicks
played into the same null sink it was 14-30 ms early after a slow stream start (and
claimed 0.5 s backlogs that were not there), while arrival times stayed within 3 ms.
Both estimates are only ever late by scheduling jitter, so the capture keeps the lower
envelope of (time - device index / rate) over the last seconds, restarted when the
latency rises for good (lost samples).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

import numpy as np

from vcam_talker.audio.dsp import StreamResampler, downmix, sanitize
from vcam_talker.audio.ring import AudioRing
from vcam_talker.audio.stats import CaptureStats
from vcam_talker.errors import DeviceError

log = logging.getLogger(__name__)


# -- devices ---------------------------------------------------------------------------


def import_sounddevice():
    """The sounddevice module, or DeviceError when PortAudio is not installed."""
    try:
        import sounddevice as sd
    except OSError as exc:
        raise DeviceError(f"PortAudio is not available ({exc}); install libportaudio2 (scripts/setup.sh)") from None
    return sd


def resolve_device(device: int | str | None, kind: str) -> dict:
    """sounddevice's info dict for an input/output device given by index, name part or None.

    Names match like sounddevice does (a substring of "name, host API"). Raises
    DeviceError naming the device and listing the available ones of that kind.
    """
    sd = import_sounddevice()
    try:
        info = sd.query_devices(device, kind)
    except (ValueError, sd.PortAudioError) as exc:
        try:
            names = [d["name"] for d in sd.query_devices() if d[f"max_{kind}_channels"] > 0]
        except sd.PortAudioError:
            names = []
        what = "default" if device is None else repr(device)
        avail = ", ".join(repr(n) for n in names) or "none"
        raise DeviceError(f"{kind} device {what} not usable ({exc}); available {kind} devices: {avail}") from None
    return dict(info)


def pick_channels(sd, info: dict, kind: str, rate: float, wanted: int | None) -> int:
    """Mono when the device takes it, else stereo (some hw: devices refuse one channel)."""
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    for ch in ([wanted] if wanted else [1, 2, int(info[f"max_{kind}_channels"])]):
        try:
            check(device=info["index"], channels=ch, samplerate=rate, dtype="float32")
            return ch
        except Exception:  # PortAudioError or ValueError: try the next count
            continue
    raise DeviceError(f"{kind} device {info['name']!r} accepts neither 1 nor 2 float32 channels at {rate:g} Hz")


def pick_rate(sd, info: dict, kind: str, wanted: float | None) -> float:
    """The requested rate, else 48 kHz when accepted (null sinks and most codecs run at
    it), else the device's default."""
    if wanted:
        return float(wanted)
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(device=info["index"], samplerate=48000, dtype="float32")
        return 48000.0
    except Exception:
        return float(info["default_samplerate"])


# -- capture ---------------------------------------------------------------------------


class _LowerEnvelope:
    """Minimum of recent clock offsets, restarted when the offset rises for good."""

    def __init__(self, window_s: float = 2.0, rise_s: float = 0.3, rise_threshold: float = 0.03):
        self.window_s, self.rise_s, self.rise_threshold = window_s, rise_s, rise_threshold
        self._items: deque[tuple[float, float]] = deque(maxlen=4096)

    def update(self, now: float, offset: float) -> float:
        items = self._items
        items.append((now, offset))
        while items and items[0][0] < now - self.window_s:
            items.popleft()
        low = min(o for _, o in items)
        recent = [o for t, o in items if t >= now - self.rise_s]
        oldest_recent = next(t for t, _ in items if t >= now - self.rise_s)
        if min(recent) > low + self.rise_threshold and items[0][0] < oldest_recent:
            # Every block for rise_s arrived later than before: samples were lost or the
            # path got slower. Forget the older, now wrong, offsets.
            while items[0][0] < oldest_recent:
                items.popleft()
            low = min(recent)
        return low


def close_stream(stream, kind: str) -> None:
    """Abort and close a PortAudio stream (None: nothing); a dying device must not block
    shutdown, so failures are logged, not raised."""
    if stream is None:
        return
    try:
        stream.abort(ignore_errors=True)
        stream.close(ignore_errors=True)
    except Exception as exc:
        log.warning("closing %s stream: %s", kind, exc)


class AudioCapture:
    """Records ``device`` into ``ring`` on a worker thread.

    Args:
        device: PortAudio device index, a part of its name (e.g. 'vcam_in_monitor',
            'pulse'), or None for the default input.
        ring: the AudioRing to fill (its rate is the output rate).
        block_ms: PortAudio block length.
        samplerate: device rate; None picks 48 kHz if accepted, else the device default.
        channels: channels to open; None: mono if the device accepts it, else stereo.
        latency: PortAudio's suggested input latency ('low', 'high' or seconds).
        queue_s: seconds of raw blocks the callback may queue for the worker.
        timestamps: "callback", "adc" or "auto": where capture times come from (see the
            module docstring; "callback" is the one that proved right through PulseAudio).

    Raises DeviceError (one line) when the device is missing or cannot be opened.
    """

    def __init__(self, device: int | str | None, ring: AudioRing, *, block_ms: float = 10.0,
                 samplerate: float | None = None, channels: int | None = None,
                 latency: str | float = "low", queue_s: float = 1.0, timestamps: str = "callback"):
        if timestamps not in ("callback", "adc", "auto"):
            raise ValueError(f"timestamps must be 'callback', 'adc' or 'auto', got {timestamps!r}")
        self.timestamps = timestamps
        self._sd = import_sounddevice()
        self.device = device
        self.ring = ring
        self.info = resolve_device(device, "input")
        self.device_rate = pick_rate(self._sd, self.info, "input", samplerate)
        self.channels = pick_channels(self._sd, self.info, "input", self.device_rate, channels)
        self.blocksize = max(1, int(round(block_ms * self.device_rate / 1000)))
        self.latency = latency
        self._queue: queue.Queue = queue.Queue(maxsize=max(4, int(queue_s * 1000 / block_ms)))
        self._dropped_frames = 0  # written only by the callback
        self._stream = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stats = CaptureStats()
        self._stats_lock = threading.Lock()
        self.error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> AudioCapture:
        """Open the stream and start the worker thread."""
        if self._thread is not None:
            return self
        sd = self._sd
        self._stop.clear()
        self._resampler = None if self.device_rate == self.ring.sample_rate else \
            StreamResampler(self.device_rate, self.ring.sample_rate)
        self._ring_base = self.ring.end  # ring index of this capture's first sample
        self._ring_written = 0
        self._dev_index = 0  # device frames consumed (incl. silence for dropped blocks)
        self._seen_dropped = 0
        self._last_offset: float | None = None
        self._envelope = _LowerEnvelope()
        try:
            self._stream = sd.InputStream(device=self.info["index"], samplerate=self.device_rate,
                                          channels=self.channels, dtype="float32", blocksize=self.blocksize,
                                          latency=self.latency, callback=self._callback)
        except (sd.PortAudioError, ValueError) as exc:
            raise DeviceError(f"cannot open input device {self.info['name']!r}: {exc}") from None
        with self._stats_lock:
            self._stats.device_latency_s = float(self._stream.latency)
        self._thread = threading.Thread(target=self._run, name="vcam-capture", daemon=True)
        self._thread.start()
        try:
            self._stream.start()
        except sd.PortAudioError as exc:
            self.stop()
            raise DeviceError(f"cannot start input device {self.info['name']!r}: {exc}") from None
        return self

    def stop(self) -> None:
        """Stop the stream, let the worker write what is queued, and join it (< 1 s)."""
        stream, self._stream = self._stream, None
        close_stream(stream, "input")
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            if self._thread.is_alive():
                log.warning("capture worker did not stop within 1 s")
            self._thread = None

    def __enter__(self) -> AudioCapture:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Block until the first samples reached the ring; False on timeout.

        Streams on PulseAudio can take up to ~1-2 s to deliver their first block.
        """
        return self.ring.wait_for(self._ring_base + 1, timeout)

    @property
    def running(self) -> bool:
        """True while the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> CaptureStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            return CaptureStats(**vars(self._stats))

    # -- real-time side ------------------------------------------------------------------

    def _callback(self, indata, frames, time_info, status) -> None:
        # Runs on PortAudio's thread: copy and queue, nothing else.
        try:
            self._queue.put_nowait((time.monotonic(), time_info.currentTime, time_info.inputBufferAdcTime,
                                    indata.copy(), bool(status.input_overflow), self._dropped_frames))
        except queue.Full:
            self._dropped_frames += frames

    # -- worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._queue.get(timeout=0.05)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                try:
                    self._process(*item)
                except Exception as exc:  # one bad block must not end the capture
                    with self._stats_lock:
                        self._stats.errors += 1
                    if self._stats.errors == 1:
                        log.error("capture: a block failed (%s: %s); carrying on, counted in status",
                                  type(exc).__name__, " ".join(str(exc).split())[:300])
        except BaseException as exc:  # keep it visible; the daemon checks .error
            self.error = exc
            log.exception("capture worker failed")

    def _block_time(self, cb_time: float, cur: float, adc: float, frames: int) -> tuple[float, str]:
        """Capture time (monotonic) of a block's first sample, and its source."""
        dur = frames / self.device_rate
        if self.timestamps != "callback" and cur > 0 and adc > 0:
            age = cur - adc  # both on the stream clock; cb_time maps it to monotonic
            # The first sample is at least a block old when the block arrives, and not
            # older than the stream's buffering allows.
            max_age = dur + 2 * self._stats.device_latency_s + 0.02
            if self.timestamps == "adc" or dur - 0.001 <= age <= max_age:
                return cb_time - age, "adc"
        return cb_time - dur, "callback"

    def _process(self, cb_time, cur, adc, block, overflow, dropped_before) -> None:
        if dropped_before > self._seen_dropped:  # keep the clock: silence for lost blocks
            lost = dropped_before - self._seen_dropped
            self._seen_dropped = dropped_before
            self._consume(np.zeros(lost, np.float32), None)
            with self._stats_lock:
                self._stats.overflows += 1
        frames = len(block)
        t_first, source = self._block_time(cb_time, cur, adc, frames)
        offset = self._envelope.update(cb_time, t_first - self._dev_index / self.device_rate)
        mono, n_bad, n_clip = sanitize(downmix(block))
        self._consume(mono, offset)
        with self._stats_lock:
            s = self._stats
            s.blocks += 1
            s.nan_samples += n_bad
            s.clipped_samples += n_clip
            s.overflows += int(overflow)
            s.timestamps = source
            s.jitter_s = cb_time - (offset + self._dev_index / self.device_rate)

    def _consume(self, mono: np.ndarray, offset: float | None) -> None:
        """Resample device samples, write them to the ring with their capture time."""
        self._dev_index += len(mono)
        out = mono if self._resampler is None else self._resampler.process(mono)
        if not len(out):
            return
        np.clip(out, -1.0, 1.0, out=out)  # filter ringing may overshoot a clipped input
        if offset is None:  # silence for lost blocks: timed by the previous offset
            offset = self._last_offset
        self._last_offset = offset
        t = None if offset is None else offset + self._ring_written / self.ring.sample_rate
        self.ring.write(out, t)
        self._ring_written += len(out)
