"""The sadtalker_parity fixture's networks, built by the production loader."""

from __future__ import annotations

import yaml

from vcam_talker.engines.sadtalker.audio_hparams import AudioHParams
from vcam_talker.engines.sadtalker.engine import Stages, WeightLayout, load_stages
from vcam_talker.engines.sadtalker.hparams import SadTalkerHParams

from .weight_rule import PARITY


def fixture_stages(full: bool = False) -> Stages:
    """Every stage at the fixture's reduced widths, from its weights.safetensors, on the CPU."""
    doc = yaml.safe_load((PARITY / "config.yaml").read_text())
    render_hp = SadTalkerHParams.from_yaml_dict(doc).render
    audio_hp = AudioHParams.from_yaml_dict(doc)
    w = PARITY / "weights.safetensors"
    # the fixture keeps both MappingNets in its one flat file; no face_3drecon in it
    layout = WeightLayout(w, w, mapping_entry=None, mapping_prefix="mapping_full." if full else "mapping.", face_recon=False)
    return load_stages(layout, render_hp, audio_hp, full=full)
