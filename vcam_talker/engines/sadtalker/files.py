"""Which checkpoint files the sadtalker engine needs, and the refusal when they are not
there. Torch-free on purpose: the daemon checks this before it imports torch, so a reload
to an engine that cannot start is refused without stalling the frame loop on the import."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from vcam_talker.config import Config
from vcam_talker.errors import EngineError

from .audio_hparams import AudioHParams
from .hparams import RenderHParams, SadTalkerHParams

#: the reference's preprocess modes (``--preprocess``), as engine.sadtalker.preprocess offers them
PREPROCESS_MODES = ("crop", "extcrop", "full", "extfull", "resize")
#: the two MappingNets: coeff 70 ("crop") and coeff 73 ("full": the source crop's s, tx, ty appended)
MAPPING_FILES = {"crop": "mapping_00229-model.pth.tar", "full": "mapping_00109-model.pth.tar"}


def is_full(preprocess: str) -> bool:
    """'full' and 'extfull' paste the face back into the photo and, as in the reference (which
    tests ``'full' in preprocess``), drive the coeff-73 MappingNet; the others show the face
    image itself and use the coeff-70 one."""
    if preprocess not in PREPROCESS_MODES:
        choices = ", ".join(PREPROCESS_MODES)
        raise EngineError(f"engine.sadtalker.preprocess: must be one of {choices}, got {preprocess!r}")
    return preprocess in ("full", "extfull")


def mapping_file(preprocess: str) -> str:
    """The MappingNet checkpoint ``preprocess`` needs."""
    return MAPPING_FILES["full" if is_full(preprocess) else "crop"]


#: beside checkpoints that are not the official ones (reduced-width test weights, distilled
#: models): their widths, and optionally the face size, in the parity fixture's layout
HPARAMS_FILE = "hparams.yaml"


@dataclass(frozen=True)
class FolderHParams:
    """What a weights folder's hparams.yaml declares. image_size: the face crop the
    networks run at (None: ``engine.sadtalker.size``)."""

    render: RenderHParams
    audio: AudioHParams
    image_size: int | None
    path: Path


def folder_hparams(directory: Path) -> FolderHParams | None:
    """The folder's hparams.yaml, or None for official checkpoints (official widths).

    Layout: the sections of ``fixtures/sadtalker_parity/config.yaml`` (``facerender``,
    ``spade_decoder``, ``audio2exp``, ``audio2pose``, ``audio``; a missing key keeps the
    official value) plus ``pipeline.image_size``. EngineError naming the file otherwise."""
    path = Path(directory) / HPARAMS_FILE
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        render = SadTalkerHParams.from_yaml_dict(doc).render
        audio = AudioHParams.from_yaml_dict(doc)
        size = (doc.get("pipeline") or {}).get("image_size")
    except (OSError, yaml.YAMLError, ValueError, TypeError, AttributeError) as exc:
        raise EngineError(f"{path}: {' '.join(str(exc).split())}") from None
    if size is not None:
        # the hourglasses halve the frame num_blocks times: at 1/4 (dense motion) and at
        # scale_factor (keypoints)
        dm, kp = render.generator.dense_motion_params, render.kp_detector
        ok = isinstance(size, int) and size > 0 and (size // 4) % 2**dm.num_blocks == 0 and size % 4 == 0 \
            and int(size * kp.scale_factor) % 2**kp.num_blocks == 0
        if not ok:
            step = max(4 * 2**dm.num_blocks, int(2**kp.num_blocks / kp.scale_factor))
            raise EngineError(f"{path}: pipeline.image_size must be a multiple of {step} for these networks, "
                              f"got {size!r}")
    return FolderHParams(render, audio, size, path)


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
    if (directory / HPARAMS_FILE).is_file():
        # not the official files: their sizes differ from the manifest's; the strict loader
        # still checks every key and shape against hparams.yaml
        missing = [n for n in missing if not (directory / n).is_file() or (directory / n).stat().st_size == 0]
    if missing:
        listed = ", ".join(
            f"{n} (incomplete: {(directory / n).stat().st_size} bytes)" if (directory / n).is_file() else n
            for n in missing
        )
        raise EngineError(f"engine sadtalker: missing weights {listed} in {directory}; "
                          f"run `vcam-talker weights download --only {group}`")
    return directory
