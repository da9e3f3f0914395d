"""Engines turn audio windows into frames; all share :class:`vcam_talker.engines.base.Engine`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vcam_talker.errors import ConfigError

if TYPE_CHECKING:
    from vcam_talker.config import Config
    from vcam_talker.engines.base import Engine

ENGINE_NAMES = ("classic", "sadtalker")


def create_engine(config: "Config") -> "Engine":
    """Build the engine named by ``config.engine.name``; imports stay lazy so that
    the classic engine never pays for torch."""
    name = config.engine.name
    if name == "classic":
        from vcam_talker.engines.classic.engine import ClassicEngine

        return ClassicEngine(config)
    if name == "sadtalker":
        from vcam_talker.engines.sadtalker.files import check_weights

        check_weights(config)  # refuse before importing torch: that import stalls every thread
        from vcam_talker.engines.sadtalker.engine import SadTalkerEngine

        return SadTalkerEngine(config)
    raise ConfigError(f"engine.name: must be one of {', '.join(ENGINE_NAMES)}, got {name!r}")
