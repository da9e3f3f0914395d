"""Random sadtalker weights in the official checkpoint layout (file names, prefixes, the
MappingNet state under 'mapping' in a .pth.tar), at reduced widths declared by an
``hparams.yaml`` beside them (see vcam_talker/engines/sadtalker/files.py), for running the
engine live on a CPU in tests.

The widths start from the parity fixture's (../shared/fixtures/sadtalker_parity/config.yaml)
and shrink the per-frame 3-D part further: measured here on one core at a 128² face, the
parity widths take ~0.3 s a frame in the generator, almost all in the dense-motion convs
on the 16-deep volume with 80 input channels; depth 2 and compress 1 take ~36 ms."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from vcam_talker.engines.sadtalker.audio2exp import Audio2Exp
from vcam_talker.engines.sadtalker.audio2pose import Audio2Pose
from vcam_talker.engines.sadtalker.audio_hparams import AudioHParams
from vcam_talker.engines.sadtalker.face_recon import FaceReconNet
from vcam_talker.engines.sadtalker.files import HPARAMS_FILE, MAPPING_FILES, combined_file
from vcam_talker.engines.sadtalker.generator import OcclusionAwareSPADEGenerator
from vcam_talker.engines.sadtalker.hparams import SadTalkerHParams
from vcam_talker.engines.sadtalker.keypoints import KPDetector
from vcam_talker.engines.sadtalker.mapping import MappingNet

from .weight_rule import PARITY, rule_tensor

#: the face size and the per-frame widths below the parity fixture's
LIVE_IMAGE_SIZE = 128
LIVE_OVERRIDES = {
    "generator_params": {"reshape_depth": 2, "max_features": 16},  # reshape_channel 8 * depth 2
    "dense_motion_params": {"reshape_depth": 2, "compress": 1, "max_features": 16},
}


def live_hparams_doc(image_size: int = LIVE_IMAGE_SIZE) -> dict:
    """The parity fixture's hyperparameters with LIVE_OVERRIDES and the face size."""
    doc = yaml.safe_load((PARITY / "config.yaml").read_text())
    out = {k: copy.deepcopy(doc[k]) for k in ("facerender", "spade_decoder", "audio2exp", "audio2pose", "audio")}
    gen = out["facerender"]["generator_params"]
    gen.update(LIVE_OVERRIDES["generator_params"])
    gen["dense_motion_params"].update(LIVE_OVERRIDES["dense_motion_params"])
    out["pipeline"] = {"image_size": image_size}
    return out


def _shapes(ctor) -> dict[str, list[int]]:
    with torch.device("meta"):  # shapes only: no memory, no init time
        module = ctor()
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _random(prefix: str, ctor) -> dict[str, torch.Tensor]:
    return {prefix + k: torch.from_numpy(rule_tensor(prefix + k, shape)) for k, shape in _shapes(ctor).items()}


def write_reduced_weights(directory: Path, doc: dict | None = None, size: int = 256) -> Path:
    """hparams.yaml plus random weights at its widths, named as the official ``size``
    checkpoints; returns ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    doc = doc if doc is not None else live_hparams_doc()
    (directory / HPARAMS_FILE).write_text(yaml.safe_dump(doc, sort_keys=False))
    hp = SadTalkerHParams.from_yaml_dict(doc).render
    ahp = AudioHParams.from_yaml_dict(doc)
    combined: dict[str, torch.Tensor] = {}
    combined.update(_random("kp_extractor.", lambda: KPDetector(hp.kp_detector, hp.common)))
    combined.update(_random("generator.", lambda: OcclusionAwareSPADEGenerator(hp.generator, hp.common)))
    combined.update(_random("audio2exp.", lambda: Audio2Exp(ahp.audio2exp)))
    combined.update(_random("audio2pose.", lambda: Audio2Pose(ahp.audio2pose)))
    combined.update(_random("face_3drecon.", FaceReconNet))
    save_file(combined, str(directory / combined_file(size)))
    for preprocess, name in MAPPING_FILES.items():
        mp = hp.mapping_full if preprocess == "full" else hp.mapping
        state = {k[len("mapping."):]: v for k, v in _random("mapping.", lambda: MappingNet(mp)).items()}
        torch.save({"mapping": state, "optimizer": {}}, directory / name)
    return directory
