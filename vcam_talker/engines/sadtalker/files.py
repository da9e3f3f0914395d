"""Which checkpoint files the sadtalker engine needs, and the refusal when they are not
there. Torch-free on purpose: the daemon checks this before it imports torch, so a reload
to an engine that cannot start is refused without stalling the frame loop on the import."""

from __future__ import annotations

from pathlib import Path

from vcam_talker.config import Config
from vcam_talker.errors import EngineError

MAPPING_FILES = {"crop": "mapping_00229-model.pth.tar", "full": "mapping_00109-model.pth.tar"}


def combined_file(size: int) -> str:
    return f"SadTalker_V0.0.2_{size}.safetensors"


def weights_dir(config: Config) -> Path:
    """engine.sadtalker.weights_dir (relative to the config file), else the default folder."""
    from vcam_talker import weights

    raw = config.engine.sadtalker.weights_dir
    if raw:
        p = Path(raw).expanduser()
        if not p.is_absolute() and config.source is not None:
            p = config.source.parent / p
        return p
    return Path(weights.default_dir())


def check_weights(config: Config) -> Path:
    """The weights folder, once every file of the configured size's group is there at its
    manifest size; EngineError (one line: the files, the folder, the command) otherwise."""
    from vcam_talker import weights

    directory = weights_dir(config)
    group = f"sadtalker-{config.engine.sadtalker.size}"
    missing = [e.name for e in weights.missing_for(group, directory)]
    if missing:
        listed = ", ".join(
            f"{n} (incomplete: {(directory / n).stat().st_size} bytes)" if (directory / n).is_file() else n
            for n in missing
        )
        raise EngineError(f"engine sadtalker: missing weights {listed} in {directory}; "
                          f"run `vcam-talker weights download --only {group}`")
    return directory
