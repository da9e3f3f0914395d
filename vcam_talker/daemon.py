"""The Daemon wires the stages together and owns their lifecycle: start, reload, stop.

    audio in (capture | demo loop | silence while the device is away) → AudioRing
        → Windower → EngineWorker → FrameStore → Pacer → sinks (virtual camera, ffmpeg)
    AudioRing → DelayedPlayback (virtual mic), delayed by the measured pipeline delay

The "vcam-control" thread owns every change after start: reloads (file watch, SIGHUP,
API), device retries with backoff, the engine fallback, and reopening failed sinks. The
frame path never waits for it: it reads the current (engine, avatar) pair once per frame,
so swaps land at a frame boundary.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vcam_talker import config as config_mod
from vcam_talker import reload_plan
from vcam_talker.config import Config
from vcam_talker.engines import create_engine
from vcam_talker.engines.base import Engine
from vcam_talker.errors import ConfigError, VcamError
from vcam_talker.latency import latency_parts
from vcam_talker.notify import Notifier
from vcam_talker.sinks.base import Sink
from vcam_talker.stream.guard import revive_dead
from vcam_talker.stream.pipeline import DelayEstimator, EngineWorker, FrameStore, Pacer, PipelineStats
from vcam_talker.stream.windows import Windower

log = logging.getLogger(__name__)

DEMO_SPEECH = Path(__file__).resolve().parent / "data" / "demo_speech.wav"
RING_SECONDS = 20.0
#: consecutive engine failures before falling back to the classic engine
FALLBACK_AFTER = 25
#: a source or output whose clock has not moved for this long is restarted
STALL_S = 1.5


@dataclass
class SinkState:
    sink: Sink
    ok: bool
    error: str = ""
    retry_at: float = 0.0
    backoff: float = 1.0


@dataclass
class Backoff:
    """Retry schedule for a failed device: 1, 2, 4 … 10 s."""

    delay: float = 1.0
    next_at: float = 0.0
    failures: int = 0

    def failed(self, now: float) -> None:
        self.failures += 1
        self.next_at = now + self.delay
        self.delay = min(self.delay * 2, 10.0)

    def reset(self) -> None:
        self.delay, self.next_at, self.failures = 1.0, 0.0, 0


@dataclass(frozen=True)
class Active:
    """What the frame path renders with; replaced whole, never mutated."""

    engine: Engine
    avatar: object


@dataclass
class Health:
    source: Backoff = field(default_factory=Backoff)
    playback: Backoff = field(default_factory=Backoff)
    source_end: int = -1
    source_moved_at: float = 0.0
    playback_calls: int = -1
    playback_moved_at: float = 0.0
    source_down: bool = False
    playback_down: bool = False
    bad_samples_reported: int = 0
    bad_samples_logged_at: float = -1e9


class Daemon:
    """One running vcam-talker: build with a validated Config, then start()/stop().

    extra_sinks: sinks added by the caller (tests, benchmarks), opened like the others.
    engine: an already built engine to use instead of the configured one.
    config_path: the file to watch and reload (None: no reloads from disk).
    """

    def __init__(self, cfg: Config, *, demo: bool = False, extra_sinks: list[Sink] | None = None,
                 engine: Engine | None = None, config_path: Path | None = None,
                 notifier: Notifier | None = None):
        self.cfg = cfg
        self._given_engine = engine
        self.demo = demo or cfg.audio.input == "demo"
        self.extra_sinks = list(extra_sinks or [])
        self.config_path = Path(config_path) if config_path else None
        self.notifier = notifier or Notifier()
        self.stats = PipelineStats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._video_stop = threading.Event()
        self.source = None
        self.filler = None
        self.playback = None
        self.sinks: list[SinkState] = []
        self.started_at = 0.0
        self._last_status = 0.0
        self._last_delay_update = 0.0
        self.first_frame = threading.Event()
        self._requests: queue.Queue = queue.Queue(maxsize=16)
        self.reloads = 0
        self.reload_errors = 0
        self.last_error = ""
        self._consecutive_errors = 0
        self._fallback_pending = False
        self.health = Health()
        self._watcher = None
        self._http = None
        self._avatar_mtime = 0.0

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        from vcam_talker.audio.ring import AudioRing

        cfg = self.cfg
        engine = self._given_engine or create_engine(cfg)
        self.active = Active(engine, engine.prepare(cfg.avatar_path()))
        self._avatar_mtime = _mtime(cfg.avatar_path())
        spec = engine.window_spec
        self.ring = AudioRing(spec.sample_rate, RING_SECONDS)
        self._start_watcher()  # before any frame: an edit made during start-up is not missed
        self._start_video(cfg)
        self._start_source()
        self._start_playback()
        self.started_at = time.monotonic()
        self._control = threading.Thread(target=self._control_loop, name="vcam-control", daemon=True)
        self._control.start()
        self._start_status_server()
        log.info("running: engine %s, %dx%d at %d fps, input %s, output %s, sinks: %s",
                 engine.name, cfg.video.width, cfg.video.height, cfg.video.fps,
                 "demo loop" if self.demo else cfg.audio.input, cfg.audio.output if self.playback else "none",
                 ", ".join(s.sink.detail for s in self.sinks if s.ok) or "none")

    def stop(self, timeout: float = 2.0) -> None:
        """Stop every stage; returns within about ``timeout`` seconds."""
        self.notifier.stopping()
        self._stop.set()
        self._video_stop.set()
        deadline = time.monotonic() + timeout
        if self._watcher is not None:
            self._watcher.stop()
        self._stop_status_server()
        for t in self._threads + [getattr(self, "_control", None)]:
            if t is not None and t.is_alive():
                t.join(max(0.05, deadline - time.monotonic()))
        for part in (self.source, self.filler, self.playback):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:
                    log.warning("stopping %s: %s", type(part).__name__, exc)
        self._close_sinks()
        active = getattr(self, "active", None)
        if active is not None:
            active.engine.close()
        self.notifier.close()

    # ---- video stage -----------------------------------------------------------------
    def _start_video(self, cfg: Config) -> None:
        spec = self.active.engine.window_spec
        fps = cfg.video.fps
        self.windower = Windower(self.ring, spec, fps)
        # measured afresh at every start: after a new window spec or frame rate the old
        # measurements describe another pipeline. Until measurements arrive: the
        # lookahead, a capture block and two frames
        initial = spec.after_s + cfg.audio.block_ms / 1000 + 2.0 / fps
        self.delay = DelayEstimator(initial_s=initial, margin_s=0.5 / fps, floor_s=spec.after_s)
        self.store = FrameStore(capacity=max(8, fps))
        if not self.sinks:
            self._open_sinks(cfg)
        self._video_stop = threading.Event()
        self.worker = EngineWorker(ring=self.ring, windower=self.windower, render=self._render, store=self.store,
                                   stats=self.stats, delay=self.delay, stop=self._video_stop,
                                   on_error=self._engine_error)
        # a restart goes on from the live edge: the windows before it are not skipped work
        self.worker.next_index = max(0, self.windower.latest_complete(self.ring.end))
        self.pacer = Pacer(ring=self.ring, windower=self.windower, fps=fps, store=self.store,
                           sinks=[s.sink for s in self.sinks if s.ok], stats=self.stats, delay=self.delay,
                           stop=self._video_stop, idle_image=lambda: self.active.avatar.image,
                           on_tick=self._on_tick)
        self._threads = [self.worker, self.pacer]
        for t in self._threads:
            t.start()

    def _stop_video(self) -> None:
        self._video_stop.set()
        for t in self._threads:
            t.join(2.0)

    def _render(self, window) -> np.ndarray:
        active = self.active  # one read: an (engine, avatar) swap lands between frames
        image = active.engine.render(window, active.avatar)
        self._consecutive_errors = 0
        return image

    # ---- sinks -----------------------------------------------------------------------
    def _build_sinks(self, cfg: Config) -> list[Sink]:
        from vcam_talker.sinks.ffmpeg import FfmpegLiveSink
        from vcam_talker.sinks.virtualcam import VirtualCamSink

        size, fps, rate = (cfg.video.width, cfg.video.height), cfg.video.fps, self.ring.sample_rate
        wanted: list[Sink] = []
        if cfg.sinks.virtualcam.enabled:
            wanted.append(VirtualCamSink(cfg.sinks.virtualcam, size, fps))
        if cfg.sinks.ffmpeg.enabled:
            wanted.append(FfmpegLiveSink(cfg.sinks.ffmpeg.target, size, fps, rate, cfg.sinks.ffmpeg.crf))
        return wanted + self.extra_sinks

    def _open_sinks(self, cfg: Config) -> None:
        from vcam_talker.sinks.ffmpeg import FfmpegLiveSink

        self.sinks = [self._try_open(s) for s in self._build_sinks(cfg)]
        cam = [s for s in self.sinks if s.sink.name == "virtualcam"]
        if cam and not cam[0].ok and cfg.sinks.fallback_record and not cfg.sinks.ffmpeg.enabled:
            target = str(Path(cfg.sinks.fallback_record).expanduser())
            log.warning("no virtual camera: recording to %s instead", target)
            size = (cfg.video.width, cfg.video.height)
            self.sinks.append(self._try_open(FfmpegLiveSink(target, size, cfg.video.fps, self.ring.sample_rate,
                                                            cfg.sinks.ffmpeg.crf)))

    def _try_open(self, sink: Sink, quiet: bool = False) -> SinkState:
        try:
            sink.open()
            return SinkState(sink, True)
        except VcamError as exc:
            if not quiet:
                log.error("%s", exc)
            return SinkState(sink, False, str(exc), retry_at=time.monotonic() + 1.0)

    def _close_sinks(self) -> None:
        for s in self.sinks:
            if s.ok:
                s.sink.close()
                s.ok = False

    # ---- audio -----------------------------------------------------------------------
    def _start_source(self) -> None:
        cfg = self.cfg
        if self.demo:
            import soundfile as sf

            from vcam_talker.audio.demo import LoopingSource

            clip, rate = sf.read(str(DEMO_SPEECH), dtype="float32")
            if rate != self.ring.sample_rate:
                import soxr

                clip = soxr.resample(clip, rate, self.ring.sample_rate)
            self.source = LoopingSource(self.ring, clip, block_ms=cfg.audio.block_ms)
            self.source.start()
            return
        try:
            self.source = self._open_capture()
            self.health.source.reset()
        except VcamError as exc:
            log.error("audio input: %s; retrying, showing the idle animation meanwhile", exc)
            self.source = None
            self._source_down(time.monotonic())

    def _open_capture(self):
        from vcam_talker.audio.capture import AudioCapture
        from vcam_talker.audio.routing import route_device

        src = AudioCapture(route_device(self.cfg.audio.input, "input"), self.ring, block_ms=self.cfg.audio.block_ms)
        src.start()
        return src

    def _source_down(self, now: float) -> None:
        """Keep the clock going with silence, so frames keep coming (idle animation)."""
        from vcam_talker.audio.demo import LoopingSource

        self.health.source_down = True
        self.health.source.failed(now)
        if self.filler is None:
            self.filler = LoopingSource(self.ring, np.zeros(self.ring.sample_rate // 10, np.float32),
                                        block_ms=self.cfg.audio.block_ms, gap_s=0.0, name="vcam-silence")
            self.filler.start()

    def _start_playback(self) -> None:
        if self.cfg.audio.output == "none":
            return
        try:
            self.playback = self._open_playback()
            self.health.playback.reset()
        except VcamError as exc:
            log.error("audio output: %s; retrying, capture and video go on", exc)
            self.playback = None
            self.health.playback_down = True
            self.health.playback.failed(time.monotonic())

    def _open_playback(self):
        from vcam_talker.audio.playback import DelayedPlayback
        from vcam_talker.audio.routing import route_device

        pb = DelayedPlayback(route_device(self.cfg.audio.output, "output"), self.ring,
                             target_delay=self.audio_delay())
        pb.start()
        return pb

    def audio_delay(self) -> float:
        """Capture-to-mic delay that matches the picture. Frame i goes out at
        time_of(c_i) + delay (the pacer follows the audio clock) and stays up for one
        period, so it is seen centred half a period later: the audio waits that long too."""
        return self.delay.value + 0.5 / self.cfg.video.fps + self.cfg.audio.trim_ms / 1000

    # ---- faults ------------------------------------------------------------------------
    def _engine_error(self, exc: Exception) -> None:
        n = self.stats.engine_errors
        self._consecutive_errors += 1
        if n == 1 or n % 100 == 0:
            log.error("engine failed on a frame (%d so far), repeating the last frame: %s", n,
                      " ".join(str(exc).split()))
        if (self._consecutive_errors >= FALLBACK_AFTER and self.active.engine.name != "classic"
                and not self._fallback_pending):
            self._fallback_pending = True
            self._request(("fallback", None))

    def _check_devices(self, now: float) -> None:
        h = self.health
        # input: a stalled or failed capture is replaced by silence and retried
        if not self.demo:
            if self.source is not None:
                end = self.ring.end
                if end != h.source_end:
                    h.source_end, h.source_moved_at = end, now
                stalled = now - h.source_moved_at > STALL_S and h.source_moved_at > 0
                if getattr(self.source, "error", None) is not None or stalled:
                    why = self.source.error or f"no audio for {STALL_S:.1f} s"
                    log.error("audio input lost (%s); retrying, showing the idle animation meanwhile", why)
                    self._stop_part(self.source)
                    self.source = None
                    self._source_down(now)
            elif now >= h.source.next_at:
                try:
                    if self.filler is not None:
                        self._stop_part(self.filler)
                        self.filler = None
                    self.source = self._open_capture()
                    h.source_down, h.source_moved_at, h.source_end = False, now, self.ring.end
                    log.info("audio input back after %d retries", h.source.failures)
                    h.source.reset()
                except VcamError as exc:
                    log.debug("audio input still unavailable: %s", exc)
                    self._source_down(now)
        # NaN/inf from the source are zeroed by the capture; say so, at most once a minute
        stats = getattr(self.source, "stats", None) if not self.demo else None
        bad = getattr(stats, "nan_samples", 0)
        if bad > h.bad_samples_reported and now - h.bad_samples_logged_at >= 60.0:
            log.warning("audio input: %d NaN or infinite samples so far, replaced with silence; "
                        "the source device or driver is faulty", bad)
            h.bad_samples_reported, h.bad_samples_logged_at = bad, now
        # output: retried on its own; capture and video go on meanwhile
        if self.cfg.audio.output != "none":
            if self.playback is not None:
                calls = self.playback.stats.callbacks
                if calls != h.playback_calls:
                    h.playback_calls, h.playback_moved_at = calls, now
                stalled = now - h.playback_moved_at > STALL_S and h.playback_moved_at > 0
                if self.playback.error is not None or stalled:
                    log.error("audio output lost (%s); retrying", self.playback.error or "the device stopped")
                    self._stop_part(self.playback)
                    self.playback = None
                    h.playback_down = True
                    h.playback.failed(now)
            elif now >= h.playback.next_at:
                try:
                    self.playback = self._open_playback()
                    h.playback_down, h.playback_moved_at, h.playback_calls = False, now, -1
                    log.info("audio output back after %d retries", h.playback.failures)
                    h.playback.reset()
                except VcamError:
                    h.playback.failed(now)
        # sinks that failed to open, or failed while sending, are reopened with backoff
        for s in self.sinks:
            if s.ok and self.pacer.sink_errors.get(s.sink.name, 0) > 0:
                why = self.pacer.sink_reasons.get(s.sink.name, "")
                log.error("%s failed (%s); reopening it, the other sinks go on", s.sink.detail, why)
                self.pacer.sink_errors[s.sink.name] = 0
                s.sink.close()
                s.ok, s.retry_at, s.backoff, s.error = False, now + 1.0, 1.0, why
            elif not s.ok and now >= s.retry_at:
                s2 = self._try_open(s.sink, quiet=True)
                if s2.ok:
                    log.info("%s is back", s.sink.detail)
                    # a frame already on its way when it was closed may have failed since:
                    # that error belongs to the old device, not this one
                    self.pacer.sink_errors[s.sink.name] = 0
                    s.ok, s.error = True, ""
                else:
                    s.backoff = min(s.backoff * 2, 10.0)
                    s.retry_at = now + s.backoff
        live = [s.sink for s in self.sinks if s.ok]
        if live != self.pacer.sinks:
            self.pacer.sinks = live

    @staticmethod
    def _stop_part(part) -> None:
        try:
            part.stop()
        except Exception as exc:
            log.warning("stopping %s: %s", type(part).__name__, exc)

    # ---- control thread: reloads, retries, fallback ------------------------------------
    def _request(self, item) -> None:
        try:
            self._requests.put_nowait(item)
        except queue.Full:
            pass

    def request_reload(self, reason: str = "request") -> None:
        """Thread-safe; called from signal handlers, the file watcher, the HTTP API."""
        self._request(("reload", reason))

    def _control_loop(self) -> None:
        while not self._stop.is_set():
            waited = time.monotonic()
            try:
                kind, arg = self._requests.get(timeout=0.25)
            except queue.Empty:
                kind = None
            try:
                self._after_stall(waited)
                self._revive_video()
                if kind == "reload":
                    self.reload(reason=arg)
                elif kind == "fallback":
                    self._fall_back()
                self._check_devices(time.monotonic())
            except Exception as exc:  # the control thread must survive anything
                log.exception("control: %s", exc)

    def _after_stall(self, waited: float) -> None:
        """A wait of at most 0.25 s that lasted seconds was a stall of the whole process
        (SIGSTOP, suspend): the devices were silent because we were, not because they
        were lost, so their stall clocks restart from now."""
        now = time.monotonic()
        if now - waited > STALL_S:
            self.health.source_moved_at = self.health.playback_moved_at = now

    def _revive_video(self) -> None:
        if not self._video_stop.is_set():
            threads = revive_dead(self._threads)
            if threads is not self._threads:
                self._threads = threads
                self.worker, self.pacer = threads

    def reload(self, cfg: Config | None = None, reason: str = "request") -> list[str]:
        """Apply a new config (default: re-read the config file). Invalid configs are
        refused with one line and the running one stays. Returns what was restarted."""
        self.notifier.reloading()
        try:
            if cfg is None:
                if self.config_path is None:
                    return []
                try:
                    cfg = config_mod.load(self.config_path)
                except ConfigError as exc:
                    self.reload_errors += 1
                    self.last_error = str(exc)
                    log.error("reload (%s) refused, keeping the running config: %s", reason, exc)
                    return []
            changed = self._apply(cfg, reason)
            self.reloads += 1
            return changed
        finally:
            self.notifier.ready()

    def _apply(self, new: Config, reason: str) -> list[str]:
        """Execute :func:`reload_plan.plan`: anything to prepare is prepared first, in this
        thread, while the old engine and avatar keep animating; then the swap and restarts."""
        old = self.cfg
        old_spec = self.active.engine.window_spec
        avatar_file_changed = _mtime(new.avatar_path()) != self._avatar_mtime
        engine, avatar = self.active.engine, self.active.avatar
        try:
            if reload_plan.engine_needed(old, new):
                engine = create_engine(new)
            p = reload_plan.plan(old, new, old_spec, engine.window_spec, avatar_file_changed=avatar_file_changed)
            if p.engine or p.avatar:
                avatar = engine.prepare(new.avatar_path())
        except VcamError as exc:
            if engine is not self.active.engine:
                engine.close()
            self.reload_errors += 1
            self.last_error = str(exc)
            log.error("reload (%s) refused, keeping the running avatar and config: %s", reason, exc)
            return []
        if p.engine or p.avatar:
            self._avatar_mtime = _mtime(new.avatar_path())
        self.cfg = new
        self._swap(engine, avatar, restart_video=p.video, reopen_sinks=p.camera)
        if p.sinks:
            self._close_sinks()
            self._open_sinks(new)
            self.pacer.sinks = [s.sink for s in self.sinks if s.ok]
        if p.tuning and self.active.engine.name == "classic":
            self.active.engine.update_tuning(new.engine.classic)
        if p.audio_input:
            if self.source is not None:
                self._stop_part(self.source)
            self.source = None
            self.demo = new.audio.input == "demo"
            self._start_source()
        if p.audio_output:
            if self.playback is not None:
                self._stop_part(self.playback)
            self.playback = None
            self._start_playback()
        if p.trim and self.playback is not None:
            self.playback.set_target_delay(self.audio_delay())
        if p.log_level:
            logging.getLogger("vcam_talker").setLevel(new.log_level.upper())
        if p.status_server:
            self._stop_status_server()
            self._start_status_server()
        if self.config_path is not None and self._watcher is not None:
            self._watch_avatar()
        done = p.describe()
        log.info("reloaded (%s): %s", reason, ", ".join(done) if done else "no change that needs a restart")
        return done

    def _swap(self, engine: Engine, avatar, *, restart_video: bool, reopen_sinks: bool = False) -> None:
        """Put a prepared (engine, avatar) in place. Without a video restart the swap is one
        reference change between two frames; with one (new window spec or video settings),
        the windower, delay estimator and pacer are rebuilt for the new engine's windows."""
        old_engine = self.active.engine
        if restart_video:
            self._stop_video()
            if reopen_sinks:
                self._close_sinks()
                self.sinks = []
            self.active = Active(engine, avatar)
            self._start_video(self.cfg)
        else:
            self.active = Active(engine, avatar)  # atomic: the next frame uses it
        if old_engine is not engine:
            old_engine.close()

    def _fall_back(self) -> None:
        old = self.active.engine
        log.error("engine %s failed %d frames in a row; falling back to the classic engine", old.name,
                  self._consecutive_errors)
        cfg = dataclasses.replace(self.cfg, engine=dataclasses.replace(self.cfg.engine, name="classic"))
        try:
            engine = create_engine(cfg)
            avatar = engine.prepare(cfg.avatar_path())
        except VcamError as exc:
            log.error("classic fallback failed too: %s", exc)
            return
        # the classic engine's windows differ: the same plan as a reload decides the restart
        p = reload_plan.plan(self.cfg, cfg, old.window_spec, engine.window_spec)
        self._swap(engine, avatar, restart_video=p.video)
        self._consecutive_errors = 0
        self._fallback_pending = False

    # ---- file watching -----------------------------------------------------------------
    def _start_watcher(self) -> None:
        if self.config_path is None:
            return
        from vcam_talker.watch import DebouncedWatcher

        self._watcher = DebouncedWatcher(lambda: self.request_reload("file changed"))
        self._watcher.watch(self.config_path)
        self._watch_avatar()
        self._watcher.start()

    def _watch_avatar(self) -> None:
        p = self.cfg.avatar_path()
        self._watcher.watch(p, replace_tag="avatar")

    # ---- status ------------------------------------------------------------------------
    def _start_status_server(self) -> None:
        addr = self.cfg.status.http
        if not addr:
            return
        from vcam_talker.status_server import StatusServer

        try:
            self._http = StatusServer(addr, self)
            self._http.start()
        except OSError as exc:
            log.error("status server on %s: %s; continuing without it", addr, exc.strerror or exc)
            self._http = None

    def _stop_status_server(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def _on_tick(self, now: float) -> None:
        if not self.first_frame.is_set():
            self.first_frame.set()
            self.notifier.ready("publishing frames")
        self.notifier.watchdog(now, progress=self.stats.frames_published)
        if now - self._last_delay_update >= 1.0:
            self._last_delay_update = now
            self.delay.update()
            if self.playback is not None:
                self.playback.set_target_delay(self.audio_delay())
        if now - self._last_status >= self.cfg.status.interval_s:
            self._last_status = now
            log.info("%s", self.status_line())

    def status(self) -> dict:
        s = self.stats.snapshot()
        s.update({"delay_ms": round(self.delay.value * 1e3, 1),
                  "queue_depth": max(0, self.store.newest() - self.pacer.due_index()),
                  "uptime_s": round(time.monotonic() - self.started_at, 1), "engine": self.active.engine.name,
                  "avatar": str(self.cfg.avatar_path()), "reloads": self.reloads,
                  "reload_errors": self.reload_errors, "last_error": self.last_error,
                  "input": "demo" if self.demo else ("down" if self.health.source_down else "ok"),
                  "output": "none" if self.cfg.audio.output == "none" else
                  ("down" if self.playback is None else "ok"),
                  "sinks": {st.sink.name: ("ok" if st.ok else st.error) for st in self.sinks}})
        pb = self.playback
        if pb is not None and pb.current_delay == pb.current_delay:
            s["audio_delay_ms"] = round(pb.current_delay * 1e3, 1)
            s["av_offset_ms"] = round((pb.current_delay - self.audio_delay()) * 1e3, 1)
            ps = pb.stats
            s["playback"] = {"speed": round(ps.speed, 4), "inserted_frames": ps.inserted_frames,
                             "removed_samples": ps.removed_samples, "underflows": ps.underflows,
                             "lost_samples": ps.lost_samples, "resyncs": ps.resyncs}
        parts = latency_parts(self.audio_delay(), self.windower.spec.after_s, self.ring.arrival_lag,
                              self.delay.median_ready())
        if parts is not None:  # the audio delay split up; the parts sum to the total
            s["latency_ms"] = parts.as_ms()
        end = self.ring.end
        if end > 0:  # maps the sample indices frames carry to monotonic capture times
            s["clock"] = {"sample": end - 1, "monotonic": self.ring.time_of(end - 1),
                          "sample_rate": self.ring.sample_rate}
        src = self.source
        if src is not None and not isinstance(getattr(src, "stats", None), dict):
            cs = src.stats
            s["capture"] = {k: getattr(cs, k) for k in ("nan_samples", "clipped_samples", "overflows")}
        return s

    def status_line(self) -> str:
        s = self.status()
        av = f"{s['av_offset_ms']:+.1f} ms" if "av_offset_ms" in s else \
            "n/a (no audio output yet)" if self.cfg.audio.output != "none" else "n/a (no audio output)"
        return (f"fps {s['fps']:.1f} | engine ms p50 {s['engine_ms_p50']:.1f} p95 {s['engine_ms_p95']:.1f} | "
                f"queue {s['queue_depth']} | delay {s['delay_ms']:.0f} ms{_parts(s)} | A/V offset {av} | "
                f"repeated {s['frames_repeated']} skipped {s['windows_skipped']}")


def _parts(s: dict) -> str:
    lat = s.get("latency_ms")
    if lat is None:
        return ""
    return (f" (audio {lat['total']:.0f} = capture {lat['capture']:.0f} + lookahead {lat['lookahead']:.0f}"
            f" + compute {lat['compute']:.0f} + buffering {lat['buffering']:.0f})")


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0
