"""Helpers for the audio/preprocessing parity tests: hparams from the fixtures, checkpoint writers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from vcam_talker.engines.sadtalker.audio_hparams import AudioHParams

from .weight_rule import FULL, PARITY, rule_sha256, rule_weights

AUDIO_PREFIXES = ("audio2exp.", "audio2pose.")

#: extra training-only tensors beyond keys.json, with names and shapes no module of ours has,
#: to show the loader skips that part by name rather than by matching shapes
FAKE_TRAINING_ONLY = {
    "audio2pose.netG.encoder.fake_head.weight": (3, 5),
    "audio2pose.netD_motion.fake_seq.9.bias": (7,),
}


def fixture_audio_hparams(folder: Path) -> AudioHParams:
    """The audio hparams of a fixture folder's config.yaml (either layout)."""
    return AudioHParams.from_yaml_dict(yaml.safe_load((folder / "config.yaml").read_text()))


def official_full_keys() -> dict[str, list]:
    """Key -> [shape, dtype] of the real combined safetensors (official_full_keys.json)."""
    doc = json.loads((PARITY / "official_full_keys.json").read_text())
    (section,) = [v for k, v in doc.items() if k.startswith("SadTalker_V0.0.2_256.safetensors")]
    return section


def write_full_audio_checkpoint(path: Path, extra: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Write the rule weights of every ``audio2exp.``/``audio2pose.`` key of keys.json (training-only
    parts included, as in the real file) plus FAKE_TRAINING_ONLY and ``extra`` as one safetensors.

    Checks the rule against the fixture's sha256 over all keys first. Returns the rule weights.
    """
    everything = rule_weights()
    expected = (FULL / "weights.sha256").read_text().split()[0]
    assert rule_sha256(everything) == expected, "weight rule does not reproduce weights.sha256"
    weights = {k: v for k, v in everything.items() if k.startswith(AUDIO_PREFIXES)}
    tensors = {k: torch.from_numpy(v) for k, v in weights.items()}
    rng = np.random.default_rng(0)
    tensors.update({k: torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for k, s in FAKE_TRAINING_ONLY.items()})
    tensors.update(extra or {})
    save_file(tensors, str(path))
    return weights


def t(a: np.ndarray) -> torch.Tensor:
    """A CPU tensor from (a contiguous copy of) a numpy array."""
    return torch.from_numpy(np.ascontiguousarray(a))


__all__ = [
    "AUDIO_PREFIXES",
    "FAKE_TRAINING_ONLY",
    "FULL",
    "PARITY",
    "fixture_audio_hparams",
    "official_full_keys",
    "t",
    "write_full_audio_checkpoint",
]
