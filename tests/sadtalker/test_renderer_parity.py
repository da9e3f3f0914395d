"""Parity of our SadTalker renderer networks with the official implementation's fixtures.

- ``sadtalker/``: full official widths, rule-generated weights written in the official file
  layout and read back through our checkpoint loader; every network once.
- ``sadtalker_parity/``: reduced widths with shipped weights; stage-isolated checks that feed
  each stage the stored upstream arrays.
- Key/shape structure at official widths against ``official_full_keys.json``.
- load_strict's refusals, and hparams parsing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from vcam_talker.engines.sadtalker.checkpoint import load_strict, read_state_dict, split_prefix
from vcam_talker.engines.sadtalker.hparams import RenderHParams, SadTalkerHParams
from vcam_talker.engines.sadtalker.keypoints import HeadMotion, head_angles, rotation_matrix, transform_keypoints
from vcam_talker.engines.sadtalker.mapping import MappingNet
from vcam_talker.errors import CheckpointError

from .renderer_build import FULL, PARITY, fixture_hparams, load_modules, module_builders, t
from .weight_rule import rule_weights

FIELDS = ("yaw", "pitch", "roll", "t", "exp")


def assert_close(name: str, ours: torch.Tensor, ref: np.ndarray, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    got = ours.detach().cpu().numpy()
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    diff = np.abs(got - ref)
    print(f"{name}: max|diff| {diff.max():.3g}, mean {diff.mean():.3g}")
    np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol, err_msg=name)


def assert_prediction(name: str, ours: torch.Tensor, ref: np.ndarray, max_tol: float = 1e-3, mean_tol: float = 2e-5) -> None:
    got = ours.detach().cpu().numpy()
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    diff = np.abs(got - ref)
    print(f"{name}: max|diff| {diff.max():.3g}, mean {diff.mean():.3g}")
    assert diff.max() <= max_tol, f"{name}: max |diff| {diff.max():.3g} > {max_tol}"
    assert diff.mean() <= mean_tol, f"{name}: mean |diff| {diff.mean():.3g} > {mean_tol}"


def motion_from(arrays, prefix: str, rows=slice(None)) -> HeadMotion:
    """A HeadMotion from stored ``{prefix}{field}`` arrays, with a batch dimension."""
    parts = []
    for f in FIELDS:
        a = arrays[prefix + f][rows]
        parts.append(t(a)[None] if a.ndim == 1 else t(a))
    return HeadMotion(*parts)


# --------------------------------------------------------------------------------------------
# Full-size fixture (official widths, rule weights written in the official layout)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_checkpoints(tmp_path_factory):
    """The rule weights written as the official files: the combined safetensors (every
    non-mapping prefix of keys.json) and the MappingNet .pth.tar with its 'mapping' entry."""
    d = tmp_path_factory.mktemp("sadtalker_full")
    weights = rule_weights()
    combined = d / "SadTalker_V0.0.2_256.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in weights.items() if not k.startswith("mapping.")}, str(combined))
    mapping_file = d / "mapping_00229-model.pth.tar"
    mapping_state = {k[len("mapping."):]: torch.from_numpy(v) for k, v in weights.items() if k.startswith("mapping.")}
    torch.save({"mapping": mapping_state}, mapping_file)
    return combined, mapping_file


@pytest.fixture(scope="module")
def full_models(full_checkpoints):
    combined, mapping_file = full_checkpoints
    return load_modules(fixture_hparams(FULL), combined, ("kp_extractor", "generator", "mapping"), mapping_file)


@pytest.fixture(scope="module")
def full_io():
    return np.load(FULL / "inputs.npz"), np.load(FULL / "outputs.npz")


@pytest.fixture(scope="module")
def full_generator_out(full_models, full_io):
    """One full-size generator step on the stored keypoints (the slow part, run once)."""
    inputs, outputs = full_io
    with torch.inference_mode():
        return full_models["generator"](t(inputs["source_image"]), t(outputs["kp_source"]), t(outputs["kp_driving"]))


def test_full_kp_detector(full_models, full_io):
    inputs, outputs = full_io
    with torch.inference_mode():
        kp = full_models["kp_extractor"](t(inputs["source_image"]))
    assert_close("kp_canonical", kp, outputs["kp_canonical"])


@pytest.mark.parametrize("which,semantics", [("source", "source_semantics"), ("driving", "target_semantics")])
def test_full_mapping(full_models, full_io, which, semantics):
    inputs, outputs = full_io
    with torch.inference_mode():
        motion = full_models["mapping"](t(inputs[semantics]))
    for f in FIELDS:
        assert_close(f"mapping_{which}_{f}", getattr(motion, f), outputs[f"mapping_{which}_{f}"])


@pytest.mark.parametrize("which", ["source", "driving"])
def test_full_keypoint_transform(full_io, which):
    _, outputs = full_io
    kp = transform_keypoints(t(outputs["kp_canonical"]), motion_from(outputs, f"mapping_{which}_"))
    assert_close(f"kp_{which}", kp, outputs[f"kp_{which}"])


@pytest.mark.parametrize(
    "ours,ref", [("prediction", "generator_prediction"), ("mask", "generator_mask"), ("occlusion_map", "generator_occlusion_map")]
)
def test_full_generator(full_generator_out, full_io, ours, ref):
    assert_close(ref, full_generator_out[ours], full_io[1][ref])


# --------------------------------------------------------------------------------------------
# Reduced-width fixture (shipped weights), stage-isolated
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity_models():
    return load_modules(
        fixture_hparams(PARITY), PARITY / "weights.safetensors", ("kp_extractor", "generator", "mapping", "mapping_full")
    )


@pytest.fixture(scope="module")
def parity_io():
    return np.load(PARITY / "inputs.npz"), np.load(PARITY / "outputs.npz")


@pytest.fixture(scope="module")
def debug_frame(parity_io):
    return int(parity_io[0]["debug_frame"])


@pytest.fixture(scope="module")
def parity_generator_out(parity_models, parity_io, debug_frame):
    inputs, outputs = parity_io
    with torch.inference_mode():
        return parity_models["generator"](
            t(inputs["source_image"]), t(outputs["kp_source"])[None], t(outputs["kp_driving"][debug_frame])[None]
        )


def test_parity_kp_detector(parity_models, parity_io):
    inputs, outputs = parity_io
    kpd = parity_models["kp_extractor"]
    with torch.inference_mode():
        src = t(inputs["source_image"])
        assert_close("kp_antialias_down", kpd.antialias(src)[0], outputs["kp_antialias_down"])
        assert_close("kp_canonical", kpd(src)[0], outputs["kp_canonical"], atol=5e-5, rtol=0)


def test_parity_mapping(parity_models, parity_io):
    _, outputs = parity_io
    with torch.inference_mode():
        source = parity_models["mapping"](t(outputs["source_semantics"])[None])
        driving = parity_models["mapping"](t(outputs["target_semantics"]))
    for f in FIELDS:
        assert_close(f"he_source_{f}", getattr(source, f)[0], outputs[f"he_source_{f}"])
        assert_close(f"he_driving_{f}", getattr(driving, f), outputs[f"he_driving_{f}"])


def test_parity_mapping_full(parity_models, parity_io):
    """coeff_nc 73: the crop parameters make the logits large, so compare relative to magnitude."""
    _, outputs = parity_io
    with torch.inference_mode():
        motion = parity_models["mapping_full"](t(outputs["mapping73_input"]))
    for f in FIELDS:
        ref = outputs[f"mapping73_{f}"]
        scale = max(1.0, float(np.abs(ref).max()))
        assert_close(f"mapping73_{f}", getattr(motion, f), ref, atol=1e-6 * scale + 1e-5, rtol=0)


@pytest.mark.parametrize("who", ["source", "driving"])
def test_parity_degrees_and_rotation(parity_io, who):
    _, outputs = parity_io
    ypr = head_angles(motion_from(outputs, f"he_{who}_"))
    rot = rotation_matrix(ypr[:, 0], ypr[:, 1], ypr[:, 2])
    ref_ypr, ref_rot = outputs[f"he_{who}_degrees_ypr"], outputs[f"he_{who}_rotation"]
    assert_close(f"he_{who}_degrees_ypr", ypr.reshape(ref_ypr.shape), ref_ypr)
    assert_close(f"he_{who}_rotation", rot.reshape(ref_rot.shape), ref_rot)


def test_parity_keypoint_transform(parity_io, debug_frame):
    inputs, outputs = parity_io
    kpc = t(outputs["kp_canonical"])[None]
    kp_source = transform_keypoints(kpc, motion_from(outputs, "he_source_"))
    assert_close("kp_source", kp_source[0], outputs["kp_source"], atol=5e-5, rtol=0)
    kp_driving = transform_keypoints(kpc, motion_from(outputs, "he_driving_"))
    assert_close("kp_driving", kp_driving, outputs["kp_driving"], atol=5e-5, rtol=0)
    yaw, pitch, roll = (float(v) for v in inputs["freeview_ypr_degrees"])
    frame = motion_from(outputs, "he_driving_", slice(debug_frame, debug_frame + 1))
    freeview = transform_keypoints(kpc, frame, yaw=yaw, pitch=pitch, roll=roll)
    assert_close("freeview_kp_driving", freeview[0], outputs["freeview_kp_driving"], atol=5e-5, rtol=0)


def test_parity_keypoint_transform_leaves_motion_untouched(parity_io):
    """The reference zeroes t[x], t[z] in place; ours must not modify its input."""
    _, outputs = parity_io
    motion = motion_from(outputs, "he_source_")
    before = motion.t.clone()
    transform_keypoints(t(outputs["kp_canonical"])[None], motion)
    assert torch.equal(motion.t, before)


def test_parity_dense_motion_alone(parity_models, parity_io, debug_frame):
    _, outputs = parity_io
    dm = parity_models["generator"].dense_motion_network
    with torch.inference_mode():
        out = dm(t(outputs["gen_feature_3d"])[None], t(outputs["kp_source"])[None], t(outputs["kp_driving"][debug_frame])[None])
    assert_close("dm_compressed_feature", out["compressed"][0], outputs["dm_compressed_feature"])
    assert_close("dm_mask", out["mask"][0], outputs["dm_mask"])
    assert_close("dm_deformation", out["deformation"][0], outputs["dm_deformation"])
    assert_close("dm_occlusion_map", out["occlusion_map"][0], outputs["dm_occlusion_map"])


def test_parity_decoder_alone(parity_models, parity_io):
    _, outputs = parity_io
    with torch.inference_mode():
        pred = parity_models["generator"].decode(t(outputs["gen_decoder_input"])[None])
    assert_prediction("decoder predictions[1]", pred[0], outputs["predictions"][1])


def test_parity_generator(parity_models, parity_io, parity_generator_out):
    inputs, outputs = parity_io
    with torch.inference_mode():
        feature_3d = parity_models["generator"].encode_source(t(inputs["source_image"]))
    out = parity_generator_out
    assert_close("gen_feature_3d", feature_3d[0], outputs["gen_feature_3d"])
    assert_close("dm_mask", out["mask"][0], outputs["dm_mask"])
    assert_close("dm_deformation", out["deformation"][0], outputs["dm_deformation"])
    assert_close("dm_occlusion_map", out["occlusion_map"][0], outputs["dm_occlusion_map"])
    assert_close("gen_decoder_input", out["decoder_input"][0], outputs["gen_decoder_input"])
    assert_prediction("generator predictions[1]", out["prediction"][0], outputs["predictions"][1])


def test_parity_cached_source_path_is_identical(parity_models, parity_io, parity_generator_out, debug_frame):
    """encode_source + compress_source once, then forward_from_features: bit-identical to forward."""
    inputs, outputs = parity_io
    gen = parity_models["generator"]
    with torch.inference_mode():
        feature_3d = gen.encode_source(t(inputs["source_image"]))
        compressed = gen.compress_source(feature_3d)
        out = gen.forward_from_features(
            feature_3d, t(outputs["kp_source"])[None], t(outputs["kp_driving"][debug_frame])[None], compressed=compressed
        )
    for key in ("prediction", "mask", "deformation", "occlusion_map", "decoder_input"):
        assert torch.equal(out[key], parity_generator_out[key]), key


# --------------------------------------------------------------------------------------------
# Structure at official widths
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_full_keys() -> dict:
    return json.loads((PARITY / "official_full_keys.json").read_text())


def _ours(module: torch.nn.Module) -> dict[str, tuple[list[int], str]]:
    return {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    "name,file_section,prefix",
    [
        ("kp_extractor", "SadTalker_V0.0.2_256.safetensors", "kp_extractor."),
        ("generator", "SadTalker_V0.0.2_256.safetensors", "generator."),
        ("mapping", "mapping_00229-model.pth.tar", ""),
        ("mapping_full", "mapping_00109-model.pth.tar", ""),
    ],
)
def test_official_keys_and_shapes(official_full_keys, name, file_section, prefix):
    with torch.device("meta"):  # shapes only, no 100M-parameter init
        module = module_builders(RenderHParams())[name]()  # official widths
    [section] = [k for k in official_full_keys if k.startswith(file_section)]
    expected = {k[len(prefix):]: (v[0], v[1]) for k, v in official_full_keys[section].items() if k.startswith(prefix)}
    ours = _ours(module)
    assert sorted(set(expected) - set(ours)) == [], "keys missing from ours"
    assert sorted(set(ours) - set(expected)) == [], "keys ours has that the official file lacks"
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}


def test_full_fixture_config_is_the_official_one():
    doc = yaml.safe_load((FULL / "config.yaml").read_text())
    assert fixture_hparams(FULL) == RenderHParams()
    assert SadTalkerHParams.from_yaml_dict({"model_params": doc["official_model_params"]}).render == RenderHParams()


def test_parity_config_reduced_widths():
    hp = fixture_hparams(PARITY)
    assert hp.common.feature_channel == 8
    assert hp.kp_detector.reshape_channel == 1024
    assert hp.generator.decoder.in_channels == 16 and hp.generator.decoder.spade_hidden == 8
    assert hp.generator.decoder.out_channels == 4 and hp.generator.decoder.label_channels == 16
    assert hp.mapping.coeff_nc == 70 and hp.mapping_full.coeff_nc == 73 and hp.mapping.descriptor_nc == 64


def test_hparams_reject_unknown_and_inconsistent():
    with pytest.raises(ValueError, match="blok_expansion"):
        RenderHParams.from_model_params({"generator_params": {"blok_expansion": 64}})
    with pytest.raises(ValueError, match="feature_channel"):
        RenderHParams.from_model_params({"common_params": {"feature_channel": 16}})


# --------------------------------------------------------------------------------------------
# load_strict refusals
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def parity_mapping_state():
    return split_prefix(read_state_dict(PARITY / "weights.safetensors"), "mapping.")


def test_load_strict_names_missing_key(parity_mapping_state):
    state = dict(parity_mapping_state)
    del state["fc_t.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: fc_t\.bias"):
        load_strict(MappingNet(fixture_hparams(PARITY).mapping), state, source="weights.safetensors:mapping.")


def test_load_strict_names_unexpected_key(parity_mapping_state):
    state = dict(parity_mapping_state)
    state["encoder3.1.weight"] = state["encoder2.1.weight"].clone()
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder3\.1\.weight"):
        load_strict(MappingNet(fixture_hparams(PARITY).mapping), state, source="weights.safetensors:mapping.")


def test_load_strict_names_wrong_shape():
    state = split_prefix(read_state_dict(PARITY / "weights.safetensors"), "mapping_full.")
    with pytest.raises(CheckpointError, match=r"first\.0\.weight"):
        load_strict(MappingNet(fixture_hparams(PARITY).mapping), state, source="weights.safetensors:mapping_full.")
