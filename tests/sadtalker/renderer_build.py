"""Helpers for the renderer parity tests: hparams from the fixtures, module builders, loaders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from vcam_talker.engines.sadtalker.checkpoint import load_strict, read_state_dict, split_prefix
from vcam_talker.engines.sadtalker.generator import OcclusionAwareSPADEGenerator
from vcam_talker.engines.sadtalker.hparams import RenderHParams, SadTalkerHParams
from vcam_talker.engines.sadtalker.keypoints import KPDetector
from vcam_talker.engines.sadtalker.mapping import MappingNet

from .weight_rule import FULL, PARITY


def fixture_hparams(folder: Path) -> RenderHParams:
    """The render hparams of a fixture folder's config.yaml (either layout)."""
    return SadTalkerHParams.from_yaml_dict(yaml.safe_load((folder / "config.yaml").read_text())).render


def module_builders(hp: RenderHParams) -> dict[str, Callable[[], nn.Module]]:
    """Constructors of our renderer modules for ``hp``, keyed by checkpoint prefix (without the dot)."""
    return {
        "kp_extractor": lambda: KPDetector(hp.kp_detector, hp.common),
        "generator": lambda: OcclusionAwareSPADEGenerator(hp.generator, hp.common),
        "mapping": lambda: MappingNet(hp.mapping),
        "mapping_full": lambda: MappingNet(hp.mapping_full),
    }


def load_modules(
    hp: RenderHParams, combined: Path, prefixes: tuple[str, ...], mapping_file: Path | None = None
) -> dict[str, nn.Module]:
    """Build the modules named by ``prefixes`` and fill them from ``combined`` (prefix-split) through
    our strict loader; ``mapping`` comes from ``mapping_file`` (entry 'mapping') when given. Eval mode."""
    builders = module_builders(hp)
    state = read_state_dict(combined)
    out = {}
    for name in prefixes:
        module = builders[name]()
        if name == "mapping" and mapping_file is not None:
            load_strict(module, read_state_dict(mapping_file, entry="mapping"), source=f"{mapping_file.name}:mapping")
        else:
            load_strict(module, split_prefix(state, name + "."), source=f"{combined.name}:{name}.")
        out[name] = module.eval()
    return out


def t(a: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing a (contiguous copy of a) numpy array."""
    return torch.from_numpy(np.ascontiguousarray(a))


__all__ = ["FULL", "PARITY", "fixture_hparams", "load_modules", "module_builders", "t"]
