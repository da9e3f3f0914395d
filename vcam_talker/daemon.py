"""The Daemon wires the stages together and owns their lifecycle: start, reload, stop.

    audio in (capture | demo loop | silence while the device is away) → AudioRing
        → Windower → EngineWorker → FrameStore → Pacer → sinks (virtual camera, ffmpeg)
    AudioRing → DelayedPlayback (virtual mic), delayed by the measured pipeline delay

The "vcam-control" thread owns every change after start: reloads (file watch, SIGHUP,
API; executed by the :class:`Reloads` mixin in vcam_talker/reloads.py), the engine
fallback, reviving dead pipeline threads, reopening the audio output with a bigger buffer
(vcam_talker/audio/headroom.py), and the :class:`Supervisor`'s look at the devices and
sinks (vcam_talker/supervisor.py: one health hook, one backoff).
The frame path never waits for it: it reads the current (engine, avatar) pair once per
frame, so swaps land at a frame boundary.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from pathlib import Path

import numpy as np

from vcam_talker import memory, selfcheck
from vcam_talker import status as status_mod
from vcam_talker.audio import headroom
from vcam_talker.audio.ports import AudioPorts
from vcam_talker.audio.ring import AudioRing
from vcam_talker.config import Config
from vcam_talker.engines import create_engine
from vcam_talker.engines.base import Engine
from vcam_talker.errors import VcamError
from vcam_talker.notify import Notifier
from vcam_talker.sinks.base import Sink
from vcam_talker.stream.guard import revive_dead
from vcam_talker.stream.delay import DelayEstimator
from vcam_talker.stream.pipeline import EngineWorker, Pacer
from vcam_talker.stream.state import FrameStore, PipelineStats
from vcam_talker.stream.windows import Windower
from vcam_talker.reloads import Active, Reloads, _mtime
from vcam_talker.supervisor import STALL_S, Supervisor
from vcam_talker.web.preview import PreviewTap
from vcam_talker.web.syncprobe import SyncProbe

log = logging.getLogger(__name__)

RING_SECONDS = 20.0
#: consecutive engine failures before falling back to the classic engine
FALLBACK_AFTER = 25
#: the start-up self-check renders this long (s); frames after the first are timed
SELFCHECK_S = 0.3
#: after the audio input (re)opens, the delay is measured afresh once this long (s) has passed
INPUT_SETTLE_S = 1.5


class Daemon(Reloads):
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
        self.headroom = headroom.Headroom()
        self._reopen_pending = False
        self._resynced_for: float | None = None
        engine = engine or create_engine(cfg)
        self.active = Active(engine, engine.prepare(cfg.avatar_path()))
        if hasattr(engine, "detector"):  # loaded now, not by a swap while the mic plays (it holds the GIL)
            engine.detector()
        # what this machine sustains with this engine and size, before any live thread runs
        self.selfcheck = selfcheck.measure_safely(engine, self.active.avatar, cfg.video.fps, seconds=SELFCHECK_S)
        (log.info if self.selfcheck.ok else log.warning)("%s", self.selfcheck.line())
        self._avatar_mtime = _mtime(cfg.avatar_path())
        self.ring = AudioRing(engine.window_spec.sample_rate, RING_SECONDS, shared=True)  # the audio helper maps it
        self.supervisor = Supervisor(publish=self._publish_sinks)
        self._stop = threading.Event()
        self._video_stop = threading.Event()
        # control page: muted animation, live preview, test sync (vcam_talker/web)
        self.muted, self.preview, self.sync = False, PreviewTap(), SyncProbe(self)
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
        self._reload_overflow: str | None = None
        self._watcher = None
        self._http = None

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        # A full garbage collection walks every object: 60 ms with torch loaded here, over
        # 100 ms on a busy machine, holding the GIL, so the audio callbacks miss their turn
        # and the mic underruns. Everything built so far lives as long as the daemon:
        # frozen, later collections skip it.
        memory.settle()
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
        self.audio.close_helper()
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
                              stats=self.stats, delay=delay, stop=self._video_stop, on_error=self._engine_error,
                              render_batch=self._render_batch, max_batch=cfg.engine.sadtalker.catch_up_batch)
        pacer = Pacer(ring=self.ring, windower=windower, fps=fps, store=store, sinks=self.supervisor.sinks(),
                      stats=self.stats, delay=delay, stop=self._video_stop,
                      idle_image=lambda: self.active.avatar.image, on_tick=self._on_tick,
                      on_sink_error=self.supervisor.report, on_frame=self._on_frame)
        return windower, delay, store, worker, pacer

    def _start_video_threads(self) -> None:
        # a restart goes on from the live edge: the windows before it are not skipped work
        self.worker.next_index = max(0, self.windower.latest_complete(self.ring.end))
        self.worker.start()
        self.pacer.start()

    def _render(self, window) -> np.ndarray:
        active = self.active  # one read: an (engine, avatar) swap lands between frames
        if self.muted:  # idle animation: the picture ignores the voice, the mic still plays it
            window = dataclasses.replace(window, samples=np.zeros_like(window.samples))
        image = self.sync.render(window.index, active.engine.render(window, active.avatar))
        self._consecutive_errors = 0
        return image

    def _render_batch(self, windows) -> list[np.ndarray]:
        """Catch-up: several windows in one engine call (a batch on the GPU)."""
        active = self.active  # one read: a swap lands between batches
        if self.muted:
            windows = [dataclasses.replace(w, samples=np.zeros_like(w.samples)) for w in windows]
        images = active.engine.render_batch(windows, active.avatar)
        images = [self.sync.render(w.index, im) for w, im in zip(windows, images)]
        self._consecutive_errors = 0
        return images

    def _on_frame(self, frame, now: float) -> None:
        """The pacer hands ``frame`` to the sinks at ``now``: two references stored."""
        self.preview(frame, now)
        self.sync.published(frame, now)

    # ---- control page: mute, test sync -------------------------------------------------
    def set_muted(self, muted: bool) -> None:
        """Mute the animation (blinks and idle motion go on); the delayed mic is not
        muted: muting it is the meeting app's job, where the other side sees it."""
        self.muted = bool(muted)
        log.info("animation %s", "muted: the avatar ignores the voice" if self.muted else "unmuted")

    def test_sync(self, timeout: float = 5.0) -> dict:
        """A flash and a click through the live pipeline; see vcam_talker/web/syncprobe.py.
        Blocks for up to ``timeout`` s: run it off the event loop."""
        res = self.sync.run(timeout)
        log.info("test sync: %s", res)
        return res

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

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
            self._fallback_pending = True  # a flag the control loop polls: it cannot be dropped
            self._request(("wake", None))

    # ---- control thread: reloads, retries, fallback ------------------------------------
    def _request(self, item) -> None:
        try:
            self._requests.put_nowait(item)
        except queue.Full:
            # a wake-up only hurries a flag the loop polls anyway; a reload is kept as a
            # flag too (each reload re-reads the file, so one is as good as many)
            if item[0] == "reload":
                self._reload_overflow = item[1]
                log.info("control: the request queue is full; the reload (%s) waits as a flag", item[1])

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
                if self._reload_overflow is not None:
                    reason, self._reload_overflow = self._reload_overflow, None
                    self.reload(reason=reason)
                if self._fallback_pending:
                    if self.active.engine.name == "classic":
                        self._fallback_pending = False
                    else:
                        self._fall_back()
                if self._reopen_pending:  # a bigger output buffer (see _audio_headroom)
                    self._reopen_pending = False
                    self.audio.stop_output()
                    self.audio.start_output(self.cfg.audio)
                    log.info("audio output reopened with a %.0f ms buffer (headroom %.0f ms after hiccups)",
                             1e3 * headroom.output_latency(self.audio_delay()), 1e3 * self.headroom.extra_s)
                self.supervisor.check(time.monotonic())
            except Exception as exc:  # the control thread must survive anything
                log.exception("control: %s", exc)

    def _revive_video(self) -> None:
        if not self._video_stop.is_set():
            threads = [self.worker, self.pacer]
            revived = revive_dead(threads)
            if revived is not threads:
                self.worker, self.pacer = revived

    # ---- status ------------------------------------------------------------------------
    def _start_status_server(self) -> None:
        """The control server (vcam_talker/web) on status.http; the daemon runs on without it
        if it cannot start, saying why in one line."""
        addr = self.cfg.status.http
        if not addr:
            return
        import secrets

        from vcam_talker.web import security
        from vcam_talker.web.server import ControlServer

        token = self.cfg.control.token
        # the per-install token only on loopback: a network bind needs one chosen on purpose
        if not token and security.is_loopback(addr.rpartition(":")[0]):
            try:
                token = security.install_token()
            except OSError as exc:  # a read-only home: the page still works, scripts cannot
                token = secrets.token_urlsafe(32)
                log.warning("cannot store the control token in %s (%s); using one for this run only",
                            security.token_path(), exc.strerror or exc)
        try:
            self._http = ControlServer(addr, self, token=token)
            self._http.start()
        except OSError as exc:
            log.error("status server on %s: %s; continuing without it", addr, exc.strerror or exc)
            self._http = None
        except VcamError as exc:
            log.error("%s", exc)
            self._http = None

    def _stop_status_server(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None

    def _on_tick(self, now: float) -> None:
        if not self.first_frame.is_set():
            self.first_frame.set()
            self.notifier.ready("publishing frames")
        self.notifier.watchdog(now, progress=self.stats.frames_published)
        opened = getattr(self.audio, "input_opened_at", None)
        if opened is not None and opened != self._resynced_for and now - opened > INPUT_SETTLE_S:
            # a (re)opened input delivers the sound server's backlog in a burst: frames from
            # it are late once; measure the delay afresh from after it
            self._resynced_for = opened
            self.delay.resync()
        if now - self._last_delay_update >= 1.0:
            self._last_delay_update = now
            self._audio_headroom(now)
            self.delay.update()
        if self.delay.pending:  # the picture and the mic move together, in a pause
            pb = self.audio.playback
            if self.delay.apply(now, quiet=pb is None or pb.in_pause()) and pb is not None:
                pb.set_target_delay(self.audio_delay())
        if now - self._last_status >= self.cfg.status.interval_s:
            self._last_status = now
            log.info("%s", self.status_line())

    def _audio_headroom(self, now: float) -> None:
        """A hiccup of the audio last second (dry ring, underrun): more room for the voice,
        and a bigger output buffer once it fits, reopened in a long pause."""
        pb = self.audio.playback
        sup = self.supervisor
        if pb is None or not sup.up("output") or not (self.demo or sup.up("input")):
            return  # an outage's gaps are the outage's, and a reopen would race its retries
        st = pb.stats
        self.headroom = headroom.step(self.headroom, st.hiccups, now, self.stats.resumed_at)
        self.delay.headroom_s = self.headroom.extra_s
        if (not self._reopen_pending and headroom.reopen_wanted(st.latency_s, self.audio_delay())
                and pb.in_pause(None)):
            self._reopen_pending = True  # the control loop polls the flag
            self._request(("wake", None))

    def status(self) -> dict:
        return status_mod.status(self)

    def status_line(self) -> str:
        return status_mod.status_line(self.status(), self.cfg.audio.output)

