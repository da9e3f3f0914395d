"""The live video path: engine worker → frame store → pacer → sinks.

Clocks: the capture ring maps every audio sample index to the monotonic time it was
captured. Frame i shows the audio instant c_i (its window centre). The pacer emits frame
i at ``time_of(c_i) + delay``, where ``delay`` is measured from how long frames take to be
ready (capture, lookahead, render), so audio played with the same delay leaves together
with the frame that shows it.

Threads (each named, each hand-off bounded):
- ``vcam-engine``: renders frames in order as their audio windows complete; when it
  falls behind the pacer it skips windows (counted) instead of queueing stale work.
- ``vcam-pacer``: ticks at exactly ``fps`` on the monotonic clock; each tick sends the
  frame for the audio now due, or repeats the last one (counted). Audio is never dropped:
  audio sinks get every sample, whatever happened to the frames, except after a stall
  (suspend, SIGSTOP, swapping) longer than STALL_S: then both threads jump to the live
  edge and the skipped audio is counted.

Neither thread may die: each iteration catches every exception, counts it and logs the
first of each kind (:class:`LoopGuard`); a thread that ends anyway is replaced by
:func:`revive_dead`, which the daemon's control loop calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from vcam_talker.audio.ring import RingRangeError
from vcam_talker.frames import AudioSpan, VideoFrame
from vcam_talker.stream.delay import DelayEstimator
from vcam_talker.stream.state import FrameStore, PipelineStats
from vcam_talker.stream.guard import LoopGuard
from vcam_talker.stream.priority import lower_this_thread
from vcam_talker.stream.windows import Windower

log = logging.getLogger(__name__)

#: a tick later than this (s) is a stall: the process was stopped, suspended or starved
STALL_S = 1.0


class EngineWorker(threading.Thread):
    """Renders frame after frame as soon as each frame's audio window is complete.

    Behind the live edge by more than one window, it catches up: with ``render_batch``
    (windows -> images, in order) it renders the newest backlog windows that can still be
    shown as one batch (at most ``max_batch``; see :meth:`_catch_up_from`), and skips only the
    older ones; without it, or when no batch fits, it jumps to the newest window.
    """

    def __init__(self, *, ring, windower: Windower, render: Callable, store: FrameStore,
                 stats: PipelineStats, delay: DelayEstimator, stop: threading.Event, on_error: Callable[[Exception], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, render_batch: Callable[[list], list] | None = None,
                 max_batch: int = 4):
        super().__init__(name="vcam-engine", daemon=True)
        self.ring, self.windower, self.render = ring, windower, render
        self.render_batch, self.max_batch = render_batch, max_batch
        self.store, self.stats, self.delay = store, stats, delay
        self.stop_event = stop
        self.on_error = on_error
        self.clock = clock
        self.next_index = 0
        self.guard = LoopGuard("vcam-engine", stats)
        self._args = dict(ring=ring, windower=windower, render=render, store=store, stats=stats, delay=delay,
                          stop=stop, on_error=on_error, clock=clock, render_batch=render_batch, max_batch=max_batch)

    def respawn(self) -> EngineWorker:
        fresh = EngineWorker(**self._args)
        fresh.next_index, fresh.guard = self.next_index, self.guard
        return fresh

    def run(self) -> None:
        self.nice = lower_this_thread()  # the audio threads win a saturated CPU
        while not self.stop_event.is_set():
            try:
                self._step()
            except Exception as exc:  # the camera must outlive any bug in one frame's path
                self.guard.failed(exc)
                self.next_index = max(self.next_index, self.windower.latest_complete(self.ring.end))
                self.stop_event.wait(0.05)  # a fault on every call must not spin a core

    def _step(self) -> None:
        i = self.next_index
        # behind the live edge (slow engine, stall): render the backlog that can still be
        # shown as one batch, skip the rest. Rendering every stale window one by one instead
        # would make frames ever later, and the measured delay, which the audio follows,
        # would grow without bound.
        latest = self.windower.latest_complete(self.ring.end)
        if latest - i > 1:
            first = self._catch_up_from(i, latest)
            self.stats.windows_skipped += first - i
            i = first
            if first < latest:
                self._step_batch(first, latest)
                return
        need = self.windower.end_sample(i)
        if not self.ring.wait_for(need, timeout=0.1):
            return
        try:
            window = self.windower.window(i)
        except RingRangeError:  # overwritten while this thread was stalled: go live
            self.next_index = self.windower.latest_complete(self.ring.end)
            return
        t0 = self.clock()
        try:
            image = self.render(window)
        except Exception as exc:  # one bad frame must not take the camera away
            self.stats.engine_errors += 1
            if self.on_error:
                self.on_error(exc)
            self.next_index = i + 1
            return
        t1 = self.clock()
        self.stats.engine_ms.append((t1 - t0) * 1e3)
        self.stats.frames_rendered += 1
        self._publish(i, window, image, t1, observe=True)
        self.next_index = i + 1

    def _publish(self, i: int, window, image, t_ready: float, observe: bool) -> None:
        c = self.windower.center(i)
        captured = self.ring.time_of(c)
        ready = t_ready - captured
        self.stats.ready_s.append(ready)
        if observe and captured >= self.stats.resumed_at - 0.5:  # audio from before a stall measures the stall
            self.delay.observe(ready)
        self.store.put(VideoFrame(index=i, t=window.t, image=image, sample=c,
                                  window=(c - self.windower.spec.before, c + self.windower.spec.after)))

    def _catch_up_from(self, i: int, latest: int) -> int:
        """The first window to render when windows i..latest are complete: the oldest one
        from which a batch up to ``latest`` still fits the latency budget, i.e. is estimated
        (recent per-frame time × frames) to be ready before the pacer shows its first frame
        (capture + current delay). ``latest`` (skip the rest) when no batch of two or more fits."""
        if self.render_batch is None or self.max_batch < 2 or not self.stats.engine_ms:
            return latest
        per_frame_s = float(np.median(list(self.stats.engine_ms)[-25:])) / 1e3
        now = self.clock()
        for n in range(min(self.max_batch, latest - i + 1), 1, -1):
            first = latest - n + 1
            if now + n * per_frame_s <= self.ring.time_of(self.windower.center(first)) + self.delay.value:
                return first
        return latest

    def _step_batch(self, first: int, latest: int) -> None:
        """Windows first..latest as one ``render_batch`` call."""
        try:
            windows = [self.windower.window(j) for j in range(first, latest + 1)]
        except RingRangeError:
            self.next_index = self.windower.latest_complete(self.ring.end)
            return
        t0 = self.clock()
        try:
            images = self.render_batch(windows)
            if len(images) != len(windows):
                raise RuntimeError(f"render_batch returned {len(images)} frames for {len(windows)} windows")
        except Exception as exc:
            self.stats.engine_errors += 1
            if self.on_error:
                self.on_error(exc)
            self.next_index = latest + 1
            return
        t1 = self.clock()
        n = len(windows)
        self.stats.engine_ms.extend([(t1 - t0) * 1e3 / n] * n)
        self.stats.frames_rendered += n
        self.stats.frames_batched += n
        self.stats.batches += 1
        for k, (window, image) in enumerate(zip(windows, images)):
            # only the newest frame measures the pipeline delay: the older ones are late by
            # design, and counting them would raise the delay the audio follows
            self._publish(first + k, window, image, t1, observe=k == n - 1)
        self.next_index = latest + 1


class Pacer(threading.Thread):
    """Emits ``fps`` frames per second to the sinks, each at the moment its audio is due
    (capture time + pipeline delay), on the audio clock."""

    def __init__(self, *, ring, windower: Windower, fps: int, store: FrameStore, sinks: list,
                 stats: PipelineStats, delay: DelayEstimator, stop: threading.Event,
                 idle_image: Callable[[], np.ndarray], on_tick: Callable[[float], None] | None = None,
                 on_sink_error: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 on_frame: Callable[[VideoFrame, float], None] | None = None):
        super().__init__(name="vcam-pacer", daemon=True)
        #: observer of each frame the sinks get, and when (the preview, test sync); must be cheap
        self.on_frame = on_frame
        self.ring, self.windower, self.fps = ring, windower, fps
        self.store, self.sinks, self.stats, self.delay = store, sinks, stats, delay
        self.stop_event = stop
        self.idle_image = idle_image
        self.on_tick = on_tick
        self.clock, self.sleep = clock, sleep
        self.rate = windower.spec.sample_rate
        self._due = 0
        self._grid_delay = delay.value  # the delay the tick grid is at (see next_deadline)
        self._stepping = False  # the delay stepped: the grid jumps to its new phase
        self._audio_pos: int | None = None
        self._last: VideoFrame | None = None
        #: failed sends per sink name, and the last reason; each failure also goes to
        #: on_sink_error(name, reason), the supervisor's health hook, which reopens the sink
        self.on_sink_error = on_sink_error
        self.sink_errors: dict[str, int] = {}
        self.sink_reasons: dict[str, str] = {}
        self.guard = LoopGuard("vcam-pacer", stats)
        self._args = dict(ring=ring, windower=windower, fps=fps, store=store, sinks=sinks, stats=stats, delay=delay,
                          stop=stop, idle_image=idle_image, on_tick=on_tick, on_sink_error=on_sink_error,
                          clock=clock, sleep=sleep, on_frame=on_frame)
        self._stall_logged_at = -1e18

    def respawn(self) -> Pacer:
        fresh = Pacer(**{**self._args, "sinks": self.sinks})
        fresh._due, fresh._last, fresh.guard = self._due, self._last, self.guard
        fresh._grid_delay, fresh._stepping = self._grid_delay, self._stepping
        fresh.sink_errors, fresh.sink_reasons = self.sink_errors, self.sink_reasons
        return fresh

    def due_index(self) -> int:
        return self._due

    def _due_sample(self, now: float) -> int | None:
        """The stream sample whose emit time is ``now``; None before any audio."""
        end = self.ring.end
        if end <= 0:
            return None
        ref = end - 1
        return int(ref + (now - self.delay.value - self.ring.time_of(ref)) * self.rate)

    #: ticks aim this long after a frame's due instant, so clock jitter rarely makes a tick
    #: land before it
    MARGIN_S = 0.001
    #: share of the phase error corrected per frame, and the largest correction (s): the
    #: audio clock's estimate jitters by milliseconds, the tick grid must not
    PHASE_GAIN = 0.2
    MAX_SLEW_S = 0.002

    def run(self) -> None:
        deadline, index = self.clock(), None
        while not self.stop_event.is_set():
            try:
                now = self.clock()
                if deadline - now > 0:
                    self.sleep(deadline - now)
                    now = self.clock()
                if now - deadline > STALL_S:
                    self.stalled(now, now - deadline)
                    index = None
                self.tick(now, index)
                deadline, index = self.next_deadline(now, deadline)
            except Exception as exc:  # a frozen camera is worse than any one bad tick
                self.guard.failed(exc)
                self._audio_pos = None  # resynchronise the audio at the live edge
                self.stop_event.wait(1.0 / self.fps)
                deadline, index = self.clock(), None

    def stalled(self, now: float, late: float) -> None:
        """The process did not run for ``late`` seconds: count it, say so (at most every
        10 s), and resynchronise: audio and frames continue from the live edge, and the
        delay is measured afresh."""
        st = self.stats
        st.stalls += 1
        st.last_stall_s = late
        st.resumed_at = now
        self.delay.resync()
        self._audio_pos = None
        if now - self._stall_logged_at >= 10.0:
            self._stall_logged_at = now
            log.warning("the video pipeline stalled for %.1f s (suspend, SIGSTOP or an overloaded machine); "
                        "resynchronised to the live edge (%d stalls so far)", late, st.stalls)

    def next_deadline(self, now: float, last: float) -> tuple[float, int | None]:
        """(when, which frame) the next tick is. Ticks are phase-locked to the audio clock:
        frame k is due when the stream reaches its instant plus the pipeline delay, so each
        frame shows at its own moment rather than at the nearest tick of a free-running
        grid (which would put each run at a random phase within a period and wrap by a
        whole period as the clocks drift). The grid moves a period per tick and is steered
        towards that moment by at most MAX_SLEW_S per tick; beyond 1.5 periods of error it
        just keeps the period. A step of the delay (the mic steps in the same pause) moves
        the grid at once: a fall skips to the first frame not yet past its moment, a rise
        holds the frame a period at a time; slewing 140 ms at 10 fps had kept the lips late
        for 7 s. Before any audio: a plain period, no frame index."""
        period = 1.0 / self.fps
        free = last + period
        if self.delay.value != self._grid_delay:
            self._grid_delay, self._stepping = self.delay.value, True
        end = self.ring.end
        if end <= 0:
            return max(free, now + 0.5 * period), None
        ref = end - 1
        anchor = self.ring.time_of(ref) - ref / self.rate + self.delay.value + self.MARGIN_S

        def moment(k: int) -> float:  # when frame k is due: from its first sample on
            return anchor + -(-k * self.rate // self.fps) / self.rate

        k = self._due + 1
        ideal = moment(k)
        if self._stepping:
            if ideal > last + 1.5 * period:  # a rise: hold this frame (no gap over 1.5 periods,
                return free, None  # so a late tick on a busy machine stays under two)
            if ideal < now:  # a fall: skip to the first frame not yet past its moment
                k += int((now - ideal) * self.fps)
                while moment(k) < now:
                    k += 1
            self._stepping = False
            return moment(k), k
        err = ideal - free
        if abs(err) > 1.5 * period:
            # start, stall, or a step of the clock: keep the period and let the audio clock
            # pick the frame (repeating or skipping) until the phase is close
            return (free if free > now - 3 * period else now), None
        t = free + min(max(self.PHASE_GAIN * err, -self.MAX_SLEW_S), self.MAX_SLEW_S)
        return max(t, now + 0.5 * period), k

    def tick(self, now: float, index: int | None = None) -> None:
        """Send one frame: ``index``, the frame this tick was scheduled for, unless the
        audio clock says the stream is more than a frame past it (then the newest due)."""
        sample = self._due_sample(now)
        if sample is not None:
            due = (sample * self.fps) // self.rate  # latest frame whose instant has passed
            if index is not None and due <= index + 1:
                due = index  # on schedule; a few ms of clock jitter either way is not a frame
            self._due = max(self._due, due)
        frame = self.store.get(self._due) if sample is not None else None
        if frame is None:
            last = self._last  # a repeat still says which audio its picture shows
            if last is None:
                frame = VideoFrame(index=self._due, t=self._due / self.fps, image=self.idle_image(), repeated=True)
            else:
                frame = VideoFrame(index=self._due, t=self._due / self.fps, image=last.image, repeated=True,
                                   sample=last.sample, window=last.window)
        elif frame.index != self._due:
            frame = VideoFrame(index=self._due, t=frame.t, image=frame.image, repeated=True, sample=frame.sample,
                               window=frame.window)
        if frame.repeated and sample is not None:
            self.stats.frames_repeated += 1
        audio = self._audio_until(sample)
        sinks = list(self.sinks)  # the control thread may swap the list meanwhile
        if self.on_frame is not None:
            self.on_frame(frame, now)
        delivered = 0
        for sink in sinks:
            try:
                sink.send(frame, audio if sink.wants_audio else None)
                delivered += 1
            except Exception as exc:
                why = " ".join(str(exc).split()) or type(exc).__name__
                self.sink_reasons[sink.name] = why
                self.sink_errors[sink.name] = self.sink_errors.get(sink.name, 0) + 1
                if self.on_sink_error is not None:
                    self.on_sink_error(sink.name, why)
        self._last = frame
        self.stats.frames_emitted += 1
        self.stats.emit_times.append(now)
        if delivered or not sinks:  # no sink open: the control thread is reopening them
            self.stats.frames_published += 1
            self.stats.publish_times.append(now)
        if self.on_tick:
            self.on_tick(now)

    def _audio_until(self, sample: int | None) -> np.ndarray | None:
        """Every sample from the last tick up to the one due now: continuous, never dropped."""
        if sample is None:
            return None
        end = min(sample, self.ring.end)
        pos = self._audio_pos
        if pos is None or (pos > 0 and pos < self.ring.start) or end - pos > self.MAX_AUDIO_S * self.rate:
            # start (may be before the stream: the ring reads zeros there), or resuming
            # after a stall: continue one frame before the live edge, count what was skipped
            live = end - self.rate // self.fps
            if pos is not None and live > pos:
                self.stats.audio_skipped_samples += live - pos
            pos = live
        if end <= pos:
            self._audio_pos = pos
            return AudioSpan.of(np.zeros(0, np.float32), pos)
        try:
            out = self.ring.read(pos, end - pos)
        except RingRangeError:  # overwritten between the check and the read
            self._audio_pos = None
            return np.zeros(0, np.float32)
        self._audio_pos = end
        return AudioSpan.of(out, pos)  # with its ring index: recorders place it by index

    #: more audio than this (s) owed at one tick means a stall: the rest is skipped
    MAX_AUDIO_S = 2.0
