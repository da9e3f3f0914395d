"""The Daemon wires the stages together and owns their lifecycle: start, reload, stop.

    audio in (capture | demo loop | silence while the device is away) → AudioRing
        → Windower → EngineWorker → FrameStore → Pacer → sinks (virtual camera, ffmpeg)
    AudioRing → DelayedPlayback (virtual mic), delayed by the measured pipeline delay

The "vcam-control" thread owns every change after start: reloads (file watch, SIGHUP,
API), the engine fallback, reviving dead pipeline threads, and the :class:`Supervisor`'s
look at the devices and sinks (vcam_talker/supervisor.py: one health hook, one backoff).
The frame path never waits for it: it reads the current (engine, avatar) pair once per
frame, so swaps land at a frame boundary.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vcam_talker import config as config_mod
from vcam_talker import reload_plan
from vcam_talker import status as status_mod
from vcam_talker.audio.ports import AudioPorts
from vcam_talker.audio.ring import AudioRing
from vcam_talker.config import Config
from vcam_talker.engines import create_engine
from vcam_talker.engines.base import Engine
from vcam_talker.errors import ConfigError, VcamError
from vcam_talker.notify import Notifier
from vcam_talker.sinks.base import Sink
from vcam_talker.stream.guard import revive_dead
from vcam_talker.stream.pipeline import DelayEstimator, EngineWorker, FrameStore, Pacer, PipelineStats
from vcam_talker.stream.windows import Windower
from vcam_talker.supervisor import STALL_S, Supervisor

log = logging.getLogger(__name__)

RING_SECONDS = 20.0
#: consecutive engine failures before falling back to the classic engine
FALLBACK_AFTER = 25


@dataclass(frozen=True)
class Active:
    """What the frame path renders with; replaced whole, never mutated."""

    engine: Engine
    avatar: object


class Daemon:
    """One running vcam-talker: build with a validated Config (this builds the engine and
    prepares the avatar), then start()/stop().

    extra_sinks: sinks added by the caller (tests, benchmarks), opened like the others.
    engine: an already built engine to use instead of the configured one.
    config_path: the file to watch and reload (None: no reloads from disk).
    """

    def __init__(self, cfg: Config, *, demo: bool = False, extra_sinks: list[Sink] | None = None,
                 engine: Engine | None = None, config_path: Path | None = None,
                 notifier: Notifier | None = None):
        self.cfg = cfg
        self.demo = demo or cfg.audio.input == "demo"
        self.extra_sinks = list(extra_sinks or [])
        self.config_path = Path(config_path) if config_path else None
        self.notifier = notifier or Notifier()
        self.stats = PipelineStats()
        engine = engine or create_engine(cfg)
        self.active = Active(engine, engine.prepare(cfg.avatar_path()))
        self._avatar_mtime = _mtime(cfg.avatar_path())
        self.ring = AudioRing(engine.window_spec.sample_rate, RING_SECONDS)
        self.supervisor = Supervisor(publish=self._publish_sinks)
        self._stop = threading.Event()
        self._video_stop = threading.Event()
        self.windower, self.delay, self.store, self.worker, self.pacer = self._build_video(cfg)
        self.audio = AudioPorts(self.ring, self.supervisor, self.audio_delay)
        self.started_at = 0.0
        self._last_status = 0.0
        self._last_delay_update = 0.0
        self.first_frame = threading.Event()
        self._requests: queue.Queue = queue.Queue(maxsize=16)
        self._control = threading.Thread(target=self._control_loop, name="vcam-control", daemon=True)
        self.reloads = 0
        self.reload_errors = 0
        self.last_error = ""
        self._consecutive_errors = 0
        self._fallback_pending = False
        self._watcher = None
        self._http = None

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        self._start_watcher()  # before any frame: an edit made during start-up is not missed
        self._open_sinks(cfg)
        self._start_video_threads()
        self.audio.start_input(cfg.audio, self.demo)
        self.audio.start_output(cfg.audio)
        self.started_at = time.monotonic()
        self._control.start()
        self._start_status_server()
        log.info("running: engine %s, %dx%d at %d fps, input %s, output %s, sinks: %s",
                 self.active.engine.name, cfg.video.width, cfg.video.height, cfg.video.fps,
                 "demo loop" if self.demo else cfg.audio.input, cfg.audio.output if self.audio.playback else "none",
                 ", ".join(s.detail for s in self.supervisor.sinks()) or "none")

    def stop(self, timeout: float = 2.0) -> None:
        """Stop every stage; returns within about ``timeout`` seconds."""
        self.notifier.stopping()
        self._stop.set()
        self._video_stop.set()
        deadline = time.monotonic() + timeout
        if self._watcher is not None:
            self._watcher.stop()
        self._stop_status_server()
        for t in (self.worker, self.pacer, self._control):
            if t.is_alive():
                t.join(max(0.05, deadline - time.monotonic()))
        self.audio.stop()
        self.supervisor.close_all()  # input, output and sinks
        self.active.engine.close()
        self.notifier.close()

    # ---- video stage -----------------------------------------------------------------
    def _build_video(self, cfg: Config) -> tuple[Windower, DelayEstimator, FrameStore, EngineWorker, Pacer]:
        """The video stage for the current engine's windows, not started yet."""
        spec = self.active.engine.window_spec
        fps = cfg.video.fps
        windower = Windower(self.ring, spec, fps)
        # measured afresh at every start: after a new window spec or frame rate the old
        # measurements describe another pipeline. Until measurements arrive: the
        # lookahead, a capture block and two frames
        initial = spec.after_s + cfg.audio.block_ms / 1000 + 2.0 / fps
        delay = DelayEstimator(initial_s=initial, margin_s=0.5 / fps, floor_s=spec.after_s)
        store = FrameStore(capacity=max(8, fps))
        worker = EngineWorker(ring=self.ring, windower=windower, render=self._render, store=store,
                              stats=self.stats, delay=delay, stop=self._video_stop, on_error=self._engine_error)
        pacer = Pacer(ring=self.ring, windower=windower, fps=fps, store=store, sinks=self.supervisor.sinks(),
                      stats=self.stats, delay=delay, stop=self._video_stop,
                      idle_image=lambda: self.active.avatar.image, on_tick=self._on_tick,
                      on_sink_error=self.supervisor.report)
        return windower, delay, store, worker, pacer

    def _start_video_threads(self) -> None:
        # a restart goes on from the live edge: the windows before it are not skipped work
        self.worker.next_index = max(0, self.windower.latest_complete(self.ring.end))
        self.worker.start()
        self.pacer.start()

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

        now = time.monotonic()
        for sink in self._build_sinks(cfg):
            self.supervisor.add_sink(sink, now)
        cam = self.supervisor.parts.get("virtualcam")
        if cam is not None and not cam.up and cfg.sinks.fallback_record and not cfg.sinks.ffmpeg.enabled:
            target = str(Path(cfg.sinks.fallback_record).expanduser())
            log.warning("no virtual camera: recording to %s instead", target)
            size = (cfg.video.width, cfg.video.height)
            self.supervisor.add_sink(FfmpegLiveSink(target, size, cfg.video.fps, self.ring.sample_rate,
                                                    cfg.sinks.ffmpeg.crf), now)

    def _publish_sinks(self, sinks: list[Sink]) -> None:
        self.pacer.sinks = sinks

    # ---- audio -----------------------------------------------------------------------
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
                now = time.monotonic()
                if now - waited > STALL_S:
                    # a wait of at most 0.25 s that lasted seconds was a stall of the whole
                    # process (SIGSTOP, suspend): the devices were silent because we were
                    self.audio.after_stall(now)
                self._revive_video()
                if kind == "reload":
                    self.reload(reason=arg)
                elif kind == "fallback":
                    self._fall_back()
                self.supervisor.check(time.monotonic())
            except Exception as exc:  # the control thread must survive anything
                log.exception("control: %s", exc)

    def _revive_video(self) -> None:
        if not self._video_stop.is_set():
            threads = [self.worker, self.pacer]
            revived = revive_dead(threads)
            if revived is not threads:
                self.worker, self.pacer = revived

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
        self._swap(engine, avatar, restart_video=p.video, reopen_sinks=p.camera or p.sinks)
        if p.tuning and self.active.engine.name == "classic":
            self.active.engine.update_tuning(new.engine.classic)
        if p.audio_input:
            self.audio.stop_input()
            self.demo = new.audio.input == "demo"
            self.audio.start_input(new.audio, self.demo)
        if p.audio_output:
            self.audio.stop_output()
            self.audio.start_output(new.audio)
        if p.trim and self.audio.playback is not None:
            self.audio.playback.set_target_delay(self.audio_delay())
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
        the windower, delay estimator and pacer are rebuilt for the new engine's windows.
        ``reopen_sinks``: the sinks are closed and opened again with the current config."""
        old_engine = self.active.engine
        if restart_video:
            self._video_stop.set()
            for t in (self.worker, self.pacer):
                t.join(2.0)
        if reopen_sinks:
            self.supervisor.remove_sinks()
            self._open_sinks(self.cfg)
        self.active = Active(engine, avatar)  # atomic: the next frame uses it
        if restart_video:
            self._video_stop = threading.Event()
            self.windower, self.delay, self.store, self.worker, self.pacer = self._build_video(self.cfg)
            self._start_video_threads()
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
            if self.audio.playback is not None:
                self.audio.playback.set_target_delay(self.audio_delay())
        if now - self._last_status >= self.cfg.status.interval_s:
            self._last_status = now
            log.info("%s", self.status_line())

    def status(self) -> dict:
        return status_mod.status(self)

    def status_line(self) -> str:
        return status_mod.status_line(self.status(), self.cfg.audio.output)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0
