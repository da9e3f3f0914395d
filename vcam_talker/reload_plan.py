"""What a config reload must restart: a pure decision, so it can be tested as a table.

The daemon asks twice: :func:`engine_needed` (from the configs alone) says whether a new
engine must be built; once built, its window spec is known and :func:`plan` decides the
rest. The daemon only executes the returned :class:`Plan`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vcam_talker.config import Config
from vcam_talker.frames import WindowSpec

#: the settings each engine is built from; the rest of ``engine.classic`` is applied live
BUILT_FROM = {"classic": lambda e: e.classic.lookahead_ms, "sadtalker": lambda e: e.sadtalker}


@dataclass(frozen=True)
class Plan:
    """engine: build and prepare a new engine first, while the old one keeps serving.
    avatar: prepare the avatar again with the kept engine.
    video: restart the video stage (windower, delay estimator, frame store, worker, pacer).
    camera: close and reopen the sinks (only with ``video``: a new frame size).
    sinks: reopen the sinks without touching the video stage.
    tuning: pass ``engine.classic`` to the running classic engine (live).
    status_server: rebind the control server (``status.http`` or ``control`` changed).
    """

    engine: bool = False
    avatar: bool = False
    video: bool = False
    camera: bool = False
    sinks: bool = False
    tuning: bool = False
    audio_input: bool = False
    audio_output: bool = False
    trim: bool = False
    log_level: bool = False
    status_server: bool = False

    def describe(self) -> list[str]:
        """What restarted, for the log line and reload()'s return value."""
        out = []
        if self.video:
            out.append("video (camera reopened)" if self.camera else "video")
        if self.engine or self.avatar:
            out.append("engine" if self.engine else "avatar")
        return out + [label for name, label in _LABELS if getattr(self, name)]


#: the log's words for the other restarts, in the order they are done
_LABELS = (("sinks", "sinks"), ("tuning", "engine tuning (live)"), ("audio_input", "audio input"),
           ("audio_output", "audio output"), ("trim", "audio trim (live)"),
           ("status_server", "status endpoint"))


def engine_needed(old: Config, new: Config) -> bool:
    """A new engine is built for another engine, a setting the engine is built from, or a
    new frame size or rate (engines render at the configured size and rate)."""
    if new.engine.name != old.engine.name or new.video != old.video:
        return True
    built_from = BUILT_FROM[new.engine.name]
    return built_from(new.engine) != built_from(old.engine)


def plan(old: Config, new: Config, old_spec: WindowSpec, new_spec: WindowSpec, *,
         avatar_file_changed: bool = False) -> Plan:
    """What changes from ``old`` to ``new``. ``new_spec`` is the window spec of the engine
    that will render (the new one when :func:`engine_needed`, else ``old_spec``); any
    change of it restarts the video stage, since the windower, the delay estimator's floor
    and the pacer were built for the old windows. ``avatar_file_changed``: the image file
    itself was saved over (same path)."""
    engine = engine_needed(old, new)
    video = new.video != old.video or new_spec != old_spec
    size_changed = (new.video.width, new.video.height) != (old.video.width, old.video.height)
    sinks_changed = new.sinks != old.sinks
    avatar = new.avatar != old.avatar or new.avatar_path() != old.avatar_path() or avatar_file_changed
    return Plan(
        engine=engine,
        avatar=avatar,
        video=video,
        camera=video and (size_changed or sinks_changed),
        sinks=sinks_changed and not video,
        # a new classic engine is built with the new tuning already
        tuning=new.engine.classic != old.engine.classic and new.engine.name == "classic" and not engine,
        audio_input=(new.audio.input != old.audio.input or new.audio.block_ms != old.audio.block_ms
                     or _helper_changed(new, old)),
        audio_output=new.audio.output != old.audio.output or _helper_changed(new, old),
        trim=new.audio.trim_ms != old.audio.trim_ms,
        log_level=new.log_level != old.log_level,
        status_server=new.status.http != old.status.http or new.control != old.control,
    )


def _helper_changed(new: Config, old: Config) -> bool:
    """Where the devices run (audio.helper) or at what priority (audio.realtime, applied
    as each device opens): both ends reopen."""
    return (new.audio.helper, new.audio.realtime) != (old.audio.helper, old.audio.realtime)
