"""A weights folder with hparams.yaml: reduced widths and face size are read from it, and a
face size the networks cannot halve often enough is refused naming the file."""

from __future__ import annotations

import pytest
import yaml

from vcam_talker import config as C
from vcam_talker.engines.sadtalker.engine import SadTalkerEngine
from vcam_talker.engines.sadtalker.files import HPARAMS_FILE, check_weights
from vcam_talker.errors import CheckpointError, EngineError

from .reduced_weights import live_hparams_doc, write_reduced_weights


def config(weights) -> C.Config:
    d = C.to_dict(C.Config())
    d["engine"]["name"] = "sadtalker"
    d["engine"]["sadtalker"].update(weights_dir=str(weights), device="cpu")
    return C.from_dict(d)


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    return write_reduced_weights(tmp_path_factory.mktemp("reduced"))


def test_reduced_folder_builds_at_its_widths_and_size(reduced):
    assert check_weights(config(reduced)) == reduced  # smaller than the manifest's sizes: accepted
    engine = SadTalkerEngine(config(reduced))
    try:
        assert engine.size == 128
        dm = engine.stages.render_hp.generator.dense_motion_params
        assert (dm.compress, dm.reshape_depth) == (1, 2)
    finally:
        engine.close()


def test_bad_image_size_is_refused(reduced, tmp_path):
    doc = live_hparams_doc(image_size=96)
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in reduced.iterdir():
        (bad / p.name).symlink_to(p)
    (bad / HPARAMS_FILE).unlink()
    (bad / HPARAMS_FILE).write_text(yaml.safe_dump(doc))
    with pytest.raises(EngineError, match=r"hparams.yaml: pipeline.image_size must be a multiple of 128"):
        SadTalkerEngine(config(bad))


def test_widths_that_disagree_with_the_weights_are_refused(reduced, tmp_path):
    doc = live_hparams_doc()
    doc["facerender"]["generator_params"]["dense_motion_params"]["compress"] = 2
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in reduced.iterdir():
        if p.name != HPARAMS_FILE:
            (bad / p.name).symlink_to(p)
    (bad / HPARAMS_FILE).write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match=r"SadTalker_V0.0.2_256.safetensors"):
        SadTalkerEngine(config(bad))
