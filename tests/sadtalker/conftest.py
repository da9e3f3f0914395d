"""Fixtures of the full-size sadtalker tests: random weights at the official shapes, in the
official layout (written once per session: ~1 GB), and an engine on them."""

from __future__ import annotations

import os

import pytest

from .official_weights import sadtalker_config, write_official_weights


@pytest.fixture(scope="session")
def official_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sadtalker_weights")
    write_official_weights(d)
    return d


@pytest.fixture(scope="module")
def full_engine(official_dir, tmp_path_factory):
    """SadTalkerEngine on ``official_dir``, preprocess full, CPU, with its own avatar cache."""
    from vcam_talker.engines.sadtalker.engine import SadTalkerEngine

    old = os.environ.get("VCAM_TALKER_CACHE")
    os.environ["VCAM_TALKER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    engine = SadTalkerEngine(sadtalker_config(weights_dir=str(official_dir), preprocess="full", device="cpu"))
    yield engine
    engine.close()
    if old is None:
        os.environ.pop("VCAM_TALKER_CACHE", None)
    else:
        os.environ["VCAM_TALKER_CACHE"] = old
