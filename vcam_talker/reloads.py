"""Executing reloads: a new config applied to the running daemon (the plan itself is the
pure :func:`vcam_talker.reload_plan.plan`), the classic fallback, and the file watch that
triggers reloads. A mixin of :class:`vcam_talker.daemon.Daemon`, run on its "vcam-control"
thread, which owns every change after start."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

from vcam_talker import config as config_mod
from vcam_talker import memory
from vcam_talker import reload_plan
from vcam_talker.config import Config
from vcam_talker.engines import create_engine
from vcam_talker.engines.base import Engine
from vcam_talker.errors import ConfigError, VcamError

log = logging.getLogger("vcam_talker.daemon")


@dataclasses.dataclass(frozen=True)
class Active:
    """What the frame path renders with; replaced whole, never mutated."""

    engine: Engine
    avatar: object


class Reloads:
    """Reload, swap, fall back, watch: the Daemon's methods for changes while running."""

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
        except Exception as exc:  # a bug or a library's error must not end the reloads either
            if engine is not self.active.engine:
                _close_quietly(engine)
            self.reload_errors += 1
            self.last_error = _one_line(exc)
            log.error("reload (%s) refused, keeping the running avatar and config: %s", reason, self.last_error)
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
        heap = memory.settle()  # the old engine and avatar freed, the new ones frozen
        log.debug("after the reload: %s", heap)
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
        self._fallback_pending = False
        engine = None
        try:
            engine = create_engine(cfg)
            avatar = engine.prepare(cfg.avatar_path())
        except Exception as exc:
            if engine is not None:
                _close_quietly(engine)
            # try again after as many failed frames again
            self._consecutive_errors = 0
            self.last_error = _one_line(exc)
            log.error("classic fallback failed too (tried again after as many failed frames): %s", self.last_error)
            return
        # the classic engine's windows differ: the same plan as a reload decides the restart
        p = reload_plan.plan(self.cfg, cfg, old.window_spec, engine.window_spec)
        self._swap(engine, avatar, restart_video=p.video)
        self._consecutive_errors = 0
        self._fallback_pending = False  # errors of the old engine's last frames asked again
        memory.settle()  # the failed engine freed, the classic one frozen

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


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return msg if isinstance(exc, VcamError) else f"{type(exc).__name__}: {msg}"


def _close_quietly(engine: Engine) -> None:
    try:
        engine.close()
    except Exception as exc:  # closing a half-built engine must not hide why it failed
        log.warning("closing the half-built %s engine failed: %s", engine.name, _one_line(exc))


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0
