"""Parity of our SadTalker audio side and source preprocessing with the official implementation.

- ``sadtalker/``: full official widths; rule weights written as the official combined
  safetensors (training-only audio2pose parts included) and read back through our loader;
  audio2exp, audio2pose with the stored latents, and the mel front end.
- ``sadtalker_parity/``: reduced widths with shipped weights; each stage fed the stored
  upstream arrays: mel, audio2exp, audio2pose, smoothing, semantic windows, crop geometry,
  3DMM alignment (uint8 images exact).
- Structure at official widths against ``official_full_keys.json`` (face_3drecon, audio2exp,
  audio2pose), a face_recon forward pass, the timeline's pose decode plan, hparams parsing.
- Loader refusals: unknown audio2pose keys, truncated checkpoint files.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from scipy.signal import savgol_filter

from vcam_talker.engines.sadtalker.audio2exp import Audio2Exp, load_audio2exp
from vcam_talker.engines.sadtalker.audio2pose import Audio2Pose, load_audio2pose, smooth_pose
from vcam_talker.engines.sadtalker.audio_hparams import Audio2PoseParams, AudioHParams, MelParams
from vcam_talker.engines.sadtalker.checkpoint import TRAINING_ONLY_PREFIXES, read_state_dict
from vcam_talker.engines.sadtalker.face_recon import FaceReconNet, coeff_3dmm_row, split_coeffs
from vcam_talker.engines.sadtalker.engine import AudioStage
from vcam_talker.engines.sadtalker.preprocess import (
    align_for_recon,
    crop_face,
    crop_geometry,
    flip_landmarks_y,
    prepare_source,
    resize_source,
)
from vcam_talker.engines.sadtalker.presets import TimelineParams
from vcam_talker.engines.sadtalker.randomness import Latents
from vcam_talker.engines.sadtalker.timeline import SourceCoeffs, clip_timeline
from vcam_talker.errors import CheckpointError

from .audio_build import (
    FAKE_TRAINING_ONLY,
    FULL,
    PARITY,
    fixture_audio_hparams,
    official_full_keys,
    t,
    write_full_audio_checkpoint,
)
from .compare import assert_close


def mel_timeline(nets: tuple, wav: np.ndarray):
    """A whole clip through the production timeline, for its mel front end (no head motion)."""
    source = SourceCoeffs(np.zeros(64, np.float32), np.zeros(6, np.float32))
    return clip_timeline(AudioStage(*nets, torch.device("cpu")), wav, source, TimelineParams(still=True))


def assert_exact(name: str, ours, ref: np.ndarray) -> None:
    got = np.asarray(ours)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    print(f"{name}: max|diff| {diff.max() if diff.size else 0:.3g}")
    assert np.array_equal(got, ref), f"{name}: not identical (max |diff| {diff.max():.3g})"


# --------------------------------------------------------------------------------------------
# Full-size fixture (official widths, rule weights in the official layout)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_combined(tmp_path_factory):
    path = tmp_path_factory.mktemp("sadtalker_audio_full") / "SadTalker_V0.0.2_256.safetensors"
    write_full_audio_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def full_nets(full_combined):
    hp = fixture_audio_hparams(FULL)
    assert hp.audio2exp == AudioHParams().audio2exp
    assert dataclasses.replace(hp.audio2pose, encoder_layer_sizes=(192, 128)) == Audio2PoseParams()
    state = read_state_dict(full_combined)
    assert any(k.startswith(TRAINING_ONLY_PREFIXES) for k in state)
    return (
        load_audio2exp(state, hp.audio2exp, source=full_combined.name),
        load_audio2pose(state, hp.audio2pose, source=full_combined.name),
    )


@pytest.fixture(scope="module")
def full_io():
    return np.load(FULL / "inputs.npz"), np.load(FULL / "outputs.npz")


def test_full_audio2exp(full_nets, full_io):
    a2e, _ = full_nets
    inputs, outputs = full_io
    with torch.inference_mode():
        exp = a2e.predict(t(inputs["indiv_mels"]), t(inputs["ref_exp"]), t(inputs["ratio_gt"]))
    assert_close("audio2exp_exp", exp, outputs["audio2exp_exp"])


def test_full_audio2pose(full_nets, full_io):
    """The encoder and decoder at full size on the reference's two calls for its 40-frame clip:
    frames 1..32, then the remainder call on frames 8..39 keeping its last 7 rows. (Which
    frames each call reads is the timeline's; test_clip_parity.py pins it on whole clips.)"""
    _, a2p = full_nets
    inputs, outputs = full_io
    mels = t(inputs["pose_mels"])
    assert mels.shape[1] == 40
    ref_pose, style, z = t(inputs["pose_ref"])[:, 0, -6:], t(inputs["pose_class"]), t(inputs["audio2pose_z"])
    with torch.inference_mode():
        emb = a2p.audio_encoder(mels)
        whole = a2p.netG.decoder(z[0], style, ref_pose, emb[:, 1:33])
        rest = a2p.netG.decoder(z[1], style, ref_pose, emb[:, 8:40])[:, -7:]
    motion = torch.cat([torch.zeros(1, 1, 6), whole, rest], dim=1)
    assert_close("audio2pose_pose_motion_pred", motion, outputs["audio2pose_pose_motion_pred"])
    assert_close("audio2pose_pose_pred", ref_pose[:, None] + motion, outputs["audio2pose_pose_pred"])
    # the stored latents are the reference's two draws after seeding 777; ours draw them too
    latents = Latents(777)
    assert torch.equal(torch.stack([latents(0), latents(1)]), z.reshape(2, 64))


def test_full_mel(full_nets):
    ref = np.load(FULL / "mel.npz")
    tl = mel_timeline(full_nets, ref["wav"])
    assert_close("mel", tl.mel, ref["mel"], atol=1e-5, rtol=0)
    assert_close("indiv_mels", tl.mel_windows(np.arange(tl.num_frames)), ref["indiv_mels"], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# Reduced-width fixture (shipped weights), stage-isolated
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity_io():
    return np.load(PARITY / "inputs.npz"), np.load(PARITY / "outputs.npz")


@pytest.fixture(scope="module")
def parity_nets():
    hp = fixture_audio_hparams(PARITY)
    assert hp.audio2exp.audio_encoder_channels == (8, 16, 32, 64, 128)
    assert hp.audio2pose.resunet_filters == (8, 16, 32, 64)
    path = PARITY / "weights.safetensors"
    state = read_state_dict(path)
    return load_audio2exp(state, hp.audio2exp, source=path.name), load_audio2pose(state, hp.audio2pose, source=path.name)


def test_parity_mel(parity_nets, parity_io):
    inputs, outputs = parity_io
    wav = (inputs["wav_int16"] / 32768).astype(np.float32)
    tl = mel_timeline(parity_nets, wav)
    assert tl.num_frames == 45
    assert_exact("wav_float32_cropped", tl.samples, outputs["wav_float32_cropped"])
    assert_close("mel", tl.mel, outputs["mel"], atol=1e-5, rtol=0)
    assert_close("indiv_mels", tl.mel_windows(np.arange(45)), outputs["indiv_mels"], atol=1e-5, rtol=0)


def test_parity_audio2exp(parity_nets, parity_io):
    a2e, _ = parity_nets
    inputs, outputs = parity_io
    mels = t(outputs["indiv_mels"])[None, :, None]  # 1×45×1×80×16
    ref_exp = t(inputs["source_coeff_3dmm"][:, :64])[:, None].expand(1, 45, 64)
    with torch.inference_mode():
        emb = a2e.embed(mels[0])
        exp = a2e.predict(mels, ref_exp, t(inputs["blink_ratio"])[None])
    assert_close("a2e_audio_embedding", emb, outputs["a2e_audio_embedding"])
    assert_close("exp_coeff", exp[0], outputs["exp_coeff"])


def test_parity_audio2pose(parity_nets, parity_io):
    """Through the production timeline: the decoder inputs of both calls (frames 1..32, then the
    remainder call on frames 13..44) and the raw pose of every frame."""
    inputs, outputs = parity_io
    source = SourceCoeffs.from_row(inputs["source_coeff_3dmm"][0], full=False)
    z = t(inputs["a2p_z"])
    wav = (inputs["wav_int16"] / 32768).astype(np.float32)
    tl = clip_timeline(AudioStage(*parity_nets, torch.device("cpu")), wav, source,
                       TimelineParams(style=int(inputs["pose_style"])), latents=lambda k: z[k])
    assert tl.decode_ends == [32, 44]
    emb = torch.stack([tl.pose_embeddings(np.arange(1, 33)), tl.pose_embeddings(np.arange(13, 45))])
    assert_close("a2p_audio_emb", emb, outputs["a2p_audio_emb"])
    pose = tl.raw_pose(np.arange(45), source.ref_pose)
    assert_close("pose_raw", pose, outputs["pose_raw"])
    assert np.array_equal(pose[0], inputs["source_coeff_3dmm"][0, 64:70])


def test_parity_smoothing_and_windows(parity_io):
    inputs, outputs = parity_io
    smoothed = smooth_pose(outputs["pose_raw"])
    assert smoothed.dtype == np.float32
    assert_exact("pose_smoothed", smoothed, outputs["pose_smoothed"])
    assert_exact("pose_smoothed (batched)", smooth_pose(outputs["pose_raw"][None])[0], outputs["pose_smoothed"])
    coeffs = np.concatenate([outputs["exp_coeff"], outputs["pose_smoothed"]], axis=1)
    assert_exact("coeffs70", coeffs, outputs["coeffs70"])
    source = SourceCoeffs.from_row(inputs["source_coeff_3dmm"][0], full=False)
    assert_exact("source_semantics", source.source_window(), outputs["source_semantics"])


def test_parity_crop(parity_io):
    inputs, outputs = parity_io
    image, lm = inputs["pre_full_image_rgb"], inputs["pre_landmarks68_full"]
    geometry = crop_geometry(lm, (image.shape[1], image.shape[0]))
    assert_exact("pre_crop_box", np.array(geometry.crop_box), outputs["pre_crop_box"])
    assert_close("pre_quad", np.array(geometry.quad), outputs["pre_quad"], atol=1e-9, rtol=0)
    assert_exact("pre_crop_info_size", np.array(geometry.size), outputs["pre_crop_info_size"])
    crop = crop_face(image, geometry)
    assert_exact("pre_crop_image", crop, outputs["pre_crop_image"])
    assert_exact("pre_crop256", resize_source(crop), outputs["pre_crop256"])
    prep = prepare_source(image, lm)
    assert_exact("prepare_source", prep.source256, outputs["pre_crop256"])


def test_parity_align(parity_io):
    inputs, outputs = parity_io
    lm = flip_landmarks_y(outputs["pre_landmarks68_crop256"], 256)
    al = align_for_recon(outputs["pre_crop256"], lm, inputs["lm3d_std_5x3"])
    assert_close("align_trans_params", al.trans_params, outputs["align_trans_params"], atol=0, rtol=1e-7)
    assert_exact("align_img224", al.image, outputs["align_img224"])
    # computed in float64 like the reference; the fixture stores float32
    assert_exact("align_lm224", al.landmarks.astype(np.float32), outputs["align_lm224"])
    row = coeff_3dmm_row(np.zeros((1, 257), np.float32), al.trans_params)
    assert_exact("coeff_3dmm crop part", row[0, 70:], outputs["align_trans_params"][2:])


# --------------------------------------------------------------------------------------------
# Structure at official widths
# --------------------------------------------------------------------------------------------


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _official(prefix: str) -> dict[str, list[int]]:
    return {k[len(prefix):]: v[0] for k, v in official_full_keys().items() if k.startswith(prefix)}


def test_structure_face_recon():
    with torch.device("meta"):
        net = FaceReconNet()
    official = _official("face_3drecon.")
    assert len(official) == 332
    assert _shapes(net) == official


def test_structure_audio_nets():
    with torch.device("meta"):
        a2e, a2p = Audio2Exp(), Audio2Pose()
    assert _shapes(a2e) == _official("audio2exp.")
    official = _official("audio2pose.")
    ours = _shapes(a2p)
    assert all(official.get(k) == v for k, v in ours.items()), "our audio2pose keys/shapes not in the official file"
    skipped = set(official) - set(ours)
    training_only = tuple(p[len("audio2pose."):] for p in TRAINING_ONLY_PREFIXES)
    assert skipped and all(k.startswith(training_only) for k in skipped)
    assert {k for k in official if k.startswith(training_only)} == skipped


def test_face_recon_forward():
    torch.manual_seed(0)
    net = FaceReconNet().eval()
    with torch.inference_mode():
        out = net(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 257)
    parts = split_coeffs(out)
    assert {k: v.shape[1] for k, v in parts.items()} == {"id": 80, "exp": 64, "tex": 80, "angle": 3, "gamma": 27, "trans": 3}
    row = coeff_3dmm_row(out, np.array([256, 256, 1.1, 120.0, 110.0], np.float32))
    assert row.shape == (1, 73)
    assert np.array_equal(row[:, :64], parts["exp"].numpy()) and np.array_equal(row[:, 67:70], parts["trans"].numpy())


# --------------------------------------------------------------------------------------------
# Chunking, streaming and hparams
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [1, 2, 20, 32, 33, 34, 40, 65, 66, 100])
def test_pose_decodes_cover_each_frame_once(parity_nets, num_frames):
    """The timeline's pose decodes on a clip of T frames: whole 32-frame chunks ending at 32, 64,
    ..., then one remainder decode ending at T-1; every frame 1..T-1 gets exactly one row."""
    wav = np.random.default_rng(num_frames).standard_normal(num_frames * 640).astype(np.float32) * 0.1
    source = SourceCoeffs(np.zeros(64, np.float32), np.zeros(6, np.float32))
    tl = clip_timeline(AudioStage(*parity_nets, torch.device("cpu")), wav, source, TimelineParams(), latents=Latents(1))
    n = num_frames - 1
    expected = [32 * (k + 1) for k in range(n // 32)] + ([num_frames - 1] if n % 32 else [])
    assert tl.decode_ends == expected and tl.decodes == len(expected)
    assert tl.num_frames == num_frames and tl.pose_ready == num_frames - 1
    assert np.isfinite(tl.raw_pose(np.arange(num_frames), source.ref_pose)).all()


def test_smoothing_short_clips():
    rng = np.random.default_rng(2)
    for n in (1, 2):
        x = rng.standard_normal((n, 6)).astype(np.float32)
        assert np.array_equal(smooth_pose(x), x)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    np.testing.assert_allclose(smooth_pose(x), savgol_filter(x.astype(np.float64), 7, 2, axis=0), atol=1e-6)


def test_hparams_layouts():
    official_pose_yaml = {
        "DATASET": {"NUM_CLASSES": 46, "FRAME_LEN": 32},
        "MODEL": {
            "CVAE": {
                "AUDIO_EMB_IN_SIZE": 512,
                "AUDIO_EMB_OUT_SIZE": 6,
                "SEQ_LEN": 32,
                "LATENT_SIZE": 64,
                "ENCODER_LAYER_SIZES": [192, 128],
                "DECODER_LAYER_SIZES": [128, 192],
            }
        },
    }
    assert AudioHParams.from_yaml_dict(official_pose_yaml) == AudioHParams()
    full = fixture_audio_hparams(FULL)
    # dumped after the official net was built: its encoder added 64 + 32*6 + 6 to the first size
    assert full.audio2pose.encoder_layer_sizes == (192 + 262, 128)
    assert dataclasses.replace(full.audio2pose, encoder_layer_sizes=(192, 128)) == Audio2PoseParams()
    assert full.mel == MelParams() and full.audio2exp == AudioHParams().audio2exp
    parity = fixture_audio_hparams(PARITY)
    assert parity.mel == MelParams() and parity.audio2exp.mapping_in == 193
    assert parity.audio2pose.audio_emb_in_size == 128
    doc = yaml.safe_load((PARITY / "config.yaml").read_text())
    doc["audio2pose"]["AUDIO_EMB_IN_SIZE"] = 512
    with pytest.raises(ValueError, match="AUDIO_EMB_IN_SIZE"):
        AudioHParams.from_yaml_dict(doc)
    doc = yaml.safe_load((PARITY / "config.yaml").read_text())
    doc["audio"]["pad_mode"] = "reflect"
    with pytest.raises(ValueError, match="pad_mode"):
        AudioHParams.from_yaml_dict(doc)
    with pytest.raises(ValueError, match="unknown"):
        AudioHParams.from_yaml_dict({"audio2pose_cfg": {"SEQ_LEN": 32, "BOGUS": 1}})


# --------------------------------------------------------------------------------------------
# Loader refusals
# --------------------------------------------------------------------------------------------


def test_unknown_audio2pose_key_is_an_error(tmp_path):
    path = tmp_path / "SadTalker_V0.0.2_256.safetensors"
    write_full_audio_checkpoint(path, extra={"audio2pose.netG.decoder.mystery.weight": torch.zeros(2)})
    state = read_state_dict(path)
    assert all(k in state for k in FAKE_TRAINING_ONLY)
    with pytest.raises(CheckpointError, match=r"unexpected keys: netG\.decoder\.mystery\.weight") as err:
        load_audio2pose(state, source=path.name)
    assert path.name in str(err.value)
    # a missing inference key is an error too
    del state["audio2pose.netG.decoder.pose_linear.bias"]
    state.pop("audio2pose.netG.decoder.mystery.weight")
    with pytest.raises(CheckpointError, match=r"missing keys: netG\.decoder\.pose_linear\.bias"):
        load_audio2pose(state, source=path.name)


def test_truncated_checkpoints_name_the_file(tmp_path):
    st_path = tmp_path / "SadTalker_V0.0.2_256.safetensors"
    write_full_audio_checkpoint(st_path)
    data = st_path.read_bytes()
    st_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"SadTalker_V0\.0\.2_256\.safetensors"):
        read_state_dict(st_path)

    pth = tmp_path / "auido2pose_00140-model.pth.tar"
    torch.save({"model": {"w": torch.zeros(64, 64)}}, pth)
    pdata = pth.read_bytes()
    pth.write_bytes(pdata[: len(pdata) // 2])
    with pytest.raises(CheckpointError, match=r"auido2pose_00140-model\.pth\.tar"):
        read_state_dict(pth, entry="model")


@pytest.mark.parametrize("t", [3, 7, 13, 40])
def test_numpy_savgol_matches_scipy(t):
    """The numpy Savitzky-Golay used where scipy is absent (the lent GPU machine's tree)."""
    from scipy.signal import savgol_filter

    from vcam_talker.engines.sadtalker.audio2pose import _savgol

    x = np.random.default_rng(t).standard_normal((2, t, 6))
    w = min(13, (t - 1) // 2 * 2 + 1)
    want = savgol_filter(x, w, 2, axis=1)
    got = _savgol(x, w, 2, axis=1)
    assert np.abs(got - want).max() <= 1e-12
    assert not np.allclose(_savgol(x, w, 1, axis=1), want)  # the check can tell another fit
