"""Live audio capture: a sounddevice InputStream feeding an :class:`AudioRing`.

The PortAudio callback only copies each block and its timestamps into a small bounded
queue; the worker thread "vcam-capture" downmixes, sanitises, resamples to the ring's
rate and writes to the ring. The pure steps (:func:`downmix`, :func:`sanitize`,
:class:`StreamResampler`) work on plain arrays.

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
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from vcam_talker.audio.ring import AudioRing
from vcam_talker.errors import DeviceError

log = logging.getLogger(__name__)


# -- pure signal steps ---------------------------------------------------------------


def downmix(block: np.ndarray) -> np.ndarray:
    """Mono float32 from a (frames,) or (frames, channels) block: the channel mean."""
    x = np.asarray(block, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.shape[1] == 1:
        return x[:, 0]
    return x.mean(axis=1, dtype=np.float32)


def sanitize(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Replace NaN/inf by 0 and clip to [-1, 1].

    Returns (clean float32 copy, non-finite count, clipped count). Non-finite samples are
    zeroed rather than clipped: an inf is a broken driver value, not a loud sample, and
    one NaN would otherwise poison the resampler state for good.
    """
    y = np.array(x, dtype=np.float32, copy=True)
    bad = ~np.isfinite(y)
    n_bad = int(bad.sum())
    if n_bad:
        y[bad] = 0.0
    over = np.abs(y) > 1.0
    n_clip = int(over.sum())
    if n_clip:
        np.clip(y, -1.0, 1.0, out=y)
    return y, n_bad, n_clip


class StreamResampler:
    """Stateful band-limited resampler (Kaiser-windowed sinc) with adjustable speed.

    Block boundaries are invisible: the input history needed by the filter is kept
    between calls, so a stream cut into any blocks resamples exactly as in one piece.
    Positions are absolute input indices: output ``k`` sits at input position
    ``start + sum(steps)``, where ``step = in_rate / out_rate * speed``; the filter is
    symmetric, so it adds no delay beyond waiting for ``half_taps`` future inputs.
    ``speed`` may change between calls (gentle time-stretch, a few percent).

    Inputs before index 0 are zeros (silence before the stream start).
    """

    def __init__(self, in_rate: float, out_rate: float, *, start: float = 0.0, zero_crossings: int = 12,
                 phases: int = 256, cutoff: float = 0.9, beta: float = 7.0):
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"resampler rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = float(in_rate)
        self.out_rate = float(out_rate)
        self.speed = 1.0
        scale = min(1.0, self.out_rate / self.in_rate) * cutoff  # low-pass below both Nyquists
        half = zero_crossings / scale
        self._k2 = int(math.ceil(half))  # taps each side
        taps = 2 * self._k2
        self._koff = np.arange(taps) - (self._k2 - 1)  # input offsets from floor(position)
        frac = np.arange(phases + 1)[:, None] / phases
        t = frac - self._koff[None, :]
        u = np.clip(1.0 - (t / half) ** 2, 0.0, None)
        kernel = scale * np.sinc(scale * t) * np.i0(beta * np.sqrt(u)) / np.i0(beta)
        kernel[np.abs(t) >= half] = 0.0
        kernel /= kernel.sum(axis=1, keepdims=True)  # unity gain at DC for every phase
        self._table = kernel.astype(np.float32)
        self._phases = phases
        self._pos = float(start)
        self._base = int(math.floor(start)) - (self._k2 - 1)
        self._buf = np.zeros(max(0, -self._base), np.float32)  # zeros before index 0

    @property
    def half_taps(self) -> int:
        """Future input samples the filter needs beyond an output's position."""
        return self._k2

    @property
    def step(self) -> float:
        """Input samples consumed per output sample."""
        return self.in_rate / self.out_rate * self.speed

    @property
    def position(self) -> float:
        """Absolute input position of the next output sample."""
        return self._pos

    @property
    def next_input_index(self) -> int:
        """Absolute index of the next input sample :meth:`process` expects."""
        return self._base + len(self._buf)

    def _positions(self, n: int) -> np.ndarray:
        return self._pos + np.arange(n) * self.step

    def input_needed(self, n_out: int) -> int:
        """How many more input samples :meth:`process` needs to produce ``n_out`` outputs."""
        if n_out <= 0:
            return 0
        last = math.floor(self._positions(n_out)[-1]) + self._k2
        return max(0, last - (self.next_input_index - 1))

    def skip(self, n_in: float) -> None:
        """Jump the position ``n_in`` input samples ahead (drop them)."""
        self._pos += float(n_in)
        self._trim()

    def process(self, x: np.ndarray, max_out: int | None = None) -> np.ndarray:
        """Append input ``x`` and return every output it completes (at most ``max_out``)."""
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if len(x):
            self._buf = np.concatenate([self._buf, x]) if len(self._buf) else x.copy()
        limit = self.next_input_index - 1 - self._k2  # floor(position) may be at most this
        n = int(math.ceil((limit + 1 - self._pos) / self.step)) if math.floor(self._pos) <= limit else 0
        if max_out is not None:
            n = min(n, max_out)
        if n <= 0:
            return np.zeros(0, np.float32)
        p = self._positions(n + 1)
        fl = np.floor(p)
        n = min(n, int(np.count_nonzero(fl <= limit)))  # guard against rounding at the edge
        p, fl = p[:n], fl[:n]
        rel = fl.astype(np.int64) - self._base - (self._k2 - 1)
        win = self._buf[rel[:, None] + np.arange(len(self._koff))[None, :]]
        f = (p - fl) * self._phases
        i0 = np.minimum(f.astype(np.int64), self._phases - 1)
        w = (f - i0).astype(np.float32)[:, None]
        coef = self._table[i0] * (1.0 - w) + self._table[i0 + 1] * w
        y = np.einsum("ij,ij->i", win, coef).astype(np.float32)
        self._pos += n * self.step
        self._trim()
        return y

    def _trim(self) -> None:
        keep_from = math.floor(self._pos) - (self._k2 - 1)
        drop = keep_from - self._base
        if drop > 0:
            self._buf = self._buf[drop:] if drop < len(self._buf) else np.zeros(0, np.float32)
            self._base = keep_from


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
