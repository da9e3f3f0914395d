"""Face reconstruction net (ResNet-50 3DMM) at full size against ``sadtalker_long/face_recon/``.

The crc32-rule weights of the 332 official ``face_3drecon.*`` keys (both sha256 files checked)
are written as a safetensors file in the official layout and loaded the way ``load_stages``
loads them. Then: ``align_img224`` -> ``recon_input`` -> pooled backbone features -> 257
coefficients -> split -> the saved 73-value row, each within |diff| <= 1e-4·(1 + |ref|).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vcam_talker.engines.sadtalker.checkpoint import read_state_dict
from vcam_talker.engines.sadtalker.engine import SourceStage, _load
from vcam_talker.engines.sadtalker.face_recon import (
    COEFF_SLICES,
    FaceReconNet,
    coeff_3dmm_row,
    recon_input,
    split_coeffs,
)

from .audio_build import official_full_keys
from .weight_rule import FACE_RECON, rule_key_sha256, rule_sha256, rule_weights_for

PREFIX = "face_3drecon."
TOL = 1e-4


def assert_close(name: str, ours, ref: np.ndarray) -> None:
    """|ours - ref| <= TOL·(1 + |ref|) everywhere; prints the max |diff|."""
    got = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    print(f"{name}: max|diff| {diff.max():.3g} (max |ref| {np.abs(ref).max():.3g})")
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=TOL, err_msg=name)


def official_recon_keys() -> dict[str, tuple[list[int], str]]:
    return {k: (v[0], v[1]) for k, v in official_full_keys().items() if k.startswith(PREFIX)}


@pytest.fixture(scope="module")
def rule() -> dict[str, np.ndarray]:
    return rule_weights_for({k: shape for k, (shape, _) in official_recon_keys().items()})


@pytest.fixture(scope="module")
def checkpoint(rule, tmp_path_factory):
    path = tmp_path_factory.mktemp("face_recon") / "SadTalker_V0.0.2_256.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in rule.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def net(checkpoint) -> FaceReconNet:
    # the exact calls load_stages makes for this net
    return _load(FaceReconNet, read_state_dict(checkpoint), checkpoint.name, PREFIX)


@pytest.fixture(scope="module")
def io():
    return dict(np.load(FACE_RECON / "inputs.npz")), dict(np.load(FACE_RECON / "outputs.npz"))


@pytest.fixture(scope="module")
def outputs(net, io):
    """Our net on the stored ``recon_input``: pooled features, heads, and the plain forward."""
    _, ref = io
    x = torch.from_numpy(ref["recon_input"])
    with torch.inference_mode():
        feat = net.features(x)
        return {"features": feat, "heads": net.heads(feat), "forward": net(x)}


def test_rule_weights_match_both_hashes(rule):
    assert len(rule) == 332
    assert sum(v.size for v in rule.values() if v.dtype == np.float32) == 24_087_745
    expected = (FACE_RECON / "face_recon_weights.sha256").read_text().split()[0]
    assert rule_sha256(rule) == expected, "combined hash of the rule weights differs from face_recon_weights.sha256"
    lines = (FACE_RECON / "face_recon.sha256").read_text().splitlines()
    per_key = {key: digest for digest, key in (line.split() for line in lines if line)}
    assert set(per_key) == set(rule)
    ours = rule_key_sha256(rule)
    bad = sorted(k for k in rule if ours[k] != per_key[k])
    assert not bad, f"{len(bad)} keys differ from face_recon.sha256, e.g. {bad[:3]}"


def test_checkpoint_has_official_layout(checkpoint):
    state = read_state_dict(checkpoint)
    official = official_recon_keys()
    assert {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()} == official


def test_loaded_net_holds_the_rule_weights(net, rule):
    own = net.state_dict()
    assert set(own) == {k[len(PREFIX):] for k in rule}
    for k, v in rule.items():
        got = own[k[len(PREFIX):]]
        assert got.dtype == torch.from_numpy(v).dtype and np.array_equal(got.numpy(), v), k
    assert not net.training


def test_recon_input(io):
    inp, ref = io
    x = recon_input(inp["align_img224"])
    assert x.dtype == torch.float32
    assert_close("recon_input", x, ref["recon_input"])
    # the reference's division is exact here, so ours must be bit-identical
    assert np.array_equal(x.numpy(), ref["recon_input"])


def test_backbone_feature(outputs, io):
    ref = io[1]["backbone_feature"]
    assert np.abs(ref).max() > 1.0  # a degenerate (e.g. all-zero) fixture must not pass
    assert_close("backbone_feature", outputs["features"], ref)


def test_coeff_257_and_split(outputs, io):
    ref = io[1]
    assert np.abs(ref["coeff_257"]).max() > 1.0
    assert_close("coeff_257", outputs["heads"], ref["coeff_257"])
    assert torch.equal(outputs["forward"], outputs["heads"])
    parts = split_coeffs(outputs["forward"])
    assert list(parts) == list(COEFF_SLICES)
    for name, value in parts.items():
        assert_close(name, value, ref[name])


def test_production_coefficients_and_saved_row(net, io):
    """SourceStage.coefficients on the aligned image, then the row prepare_arrays stores."""
    inp, ref = io
    stage = SourceStage(None, None, net, torch.device("cpu"), torch.float32)  # type: ignore[arg-type]
    with torch.inference_mode():
        coeffs = stage.coefficients(inp["align_img224"])
    assert coeffs.dtype == np.float32
    assert_close("coefficients (production)", coeffs[None], ref["coeff_257"])
    row = coeff_3dmm_row(coeffs[None], inp["align_trans_params"])
    assert_close("coeff_3dmm_73", row, ref["coeff_3dmm_73"])
    assert np.array_equal(row[0, 70:], inp["align_trans_params"][2:5])


def test_tolerance_catches_a_channel_swap(net, io):
    """Control: a BGR input (a plausible preprocessing slip) must fall outside the tolerance."""
    inp, ref = io
    with torch.inference_mode():
        wrong = net(recon_input(inp["align_img224"][:, :, ::-1]))
    with pytest.raises(AssertionError):
        assert_close("coeff_257 from BGR (expected to fail)", wrong, ref["coeff_257"])
