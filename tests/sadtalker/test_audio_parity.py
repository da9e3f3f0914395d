"""Parity of our SadTalker audio side and source preprocessing with the official implementation.

- ``sadtalker/``: full official widths; rule weights written as the official combined
  safetensors (training-only audio2pose parts included) and read back through our loader;
  audio2exp, audio2pose with the stored latents, and the mel front end.
- ``sadtalker_parity/``: reduced widths with shipped weights; each stage fed the stored
  upstream arrays: mel, audio2exp, audio2pose, smoothing, semantic windows, crop geometry,
  3DMM alignment (uint8 images exact).
- Structure at official widths against ``official_full_keys.json`` (face_3drecon, audio2exp,
  audio2pose), a face_recon forward pass, chunking/streaming properties, hparams parsing.
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
from vcam_talker.engines.sadtalker.audio2pose import (
    Audio2Pose,
    load_audio2pose,
    plan_pose_chunks,
    semantic_window,
    semantic_windows,
    smooth_pose,
    source_semantics,
)
from vcam_talker.engines.sadtalker.audio_hparams import Audio2PoseParams, AudioHParams, MelParams
from vcam_talker.engines.sadtalker.checkpoint import TRAINING_ONLY_PREFIXES, read_state_dict
from vcam_talker.engines.sadtalker.face_recon import FaceReconNet, coeff_3dmm_row, split_coeffs
from vcam_talker.engines.sadtalker.mel import (
    MelFrontend,
    crop_to_frames,
    last_mel_frame,
    mel_window,
    mel_windows,
    wav_to_windows,
)
from vcam_talker.engines.sadtalker.preprocess import (
    align_for_recon,
    crop_face,
    crop_geometry,
    flip_landmarks_y,
    prepare_source,
    resize_source,
)
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


def assert_close(name: str, ours, ref: np.ndarray, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    got = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    diff = np.abs(got.astype(np.float64) - ref)
    print(f"{name}: max|diff| {diff.max():.3g}")
    np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol, err_msg=name)


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
    _, a2p = full_nets
    inputs, outputs = full_io
    mels = t(inputs["pose_mels"])
    assert mels.shape[1] == 40
    with torch.inference_mode():
        out = a2p.predict(
            mels, t(inputs["pose_ref"])[:, 0, -6:], t(inputs["pose_class"]), z=t(inputs["audio2pose_z"])
        )
    assert len(out["audio_emb"]) == 2  # a whole chunk (frames 1..32) and the remainder (33..39)
    assert_close("audio2pose_pose_motion_pred", out["pose_motion_pred"], outputs["audio2pose_pose_motion_pred"])
    assert_close("audio2pose_pose_pred", out["pose_pred"], outputs["audio2pose_pose_pred"])
    # the stored latents are the reference's two draws after seeding 777; drawing our own gives them too
    with torch.inference_mode():
        drawn = a2p.predict(
            mels, t(inputs["pose_ref"])[:, 0, -6:], 3, generator=torch.Generator().manual_seed(777)
        )
    assert torch.equal(drawn["pose_pred"], out["pose_pred"])


def test_full_mel():
    ref = np.load(FULL / "mel.npz")
    mel, windows = wav_to_windows(ref["wav"])
    assert_close("mel", mel, ref["mel"], atol=1e-5, rtol=0)
    assert_close("indiv_mels", windows, ref["indiv_mels"], atol=1e-5, rtol=0)


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


def test_parity_mel(parity_io):
    inputs, outputs = parity_io
    wav = (inputs["wav_int16"] / 32768).astype(np.float32)
    cropped, num_frames = crop_to_frames(wav)
    assert num_frames == 45
    assert_exact("wav_float32_cropped", cropped, outputs["wav_float32_cropped"])
    mel, windows = wav_to_windows(wav)
    assert_close("mel", mel, outputs["mel"], atol=1e-5, rtol=0)
    assert_close("indiv_mels", windows, outputs["indiv_mels"], atol=1e-5, rtol=0)


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
    _, a2p = parity_nets
    inputs, outputs = parity_io
    mels = t(outputs["indiv_mels"])[None, :, None]
    with torch.inference_mode():
        out = a2p.predict(
            mels, t(inputs["source_coeff_3dmm"][:, 64:70]), int(inputs["pose_style"]), z=t(inputs["a2p_z"])[:, None]
        )
    assert_close("a2p_audio_emb", torch.cat(out["audio_emb"]), outputs["a2p_audio_emb"])
    assert_close("pose_raw", out["pose_pred"][0], outputs["pose_raw"])
    assert np.array_equal(out["pose_pred"][0, 0].numpy(), inputs["source_coeff_3dmm"][0, 64:70])


def test_parity_smoothing_and_windows(parity_io):
    inputs, outputs = parity_io
    smoothed = smooth_pose(outputs["pose_raw"])
    assert smoothed.dtype == np.float32
    assert_exact("pose_smoothed", smoothed, outputs["pose_smoothed"])
    assert_exact("pose_smoothed (batched)", smooth_pose(outputs["pose_raw"][None])[0], outputs["pose_smoothed"])
    coeffs = np.concatenate([outputs["exp_coeff"], outputs["pose_smoothed"]], axis=1)
    assert_exact("coeffs70", coeffs, outputs["coeffs70"])
    assert_exact("target_semantics", semantic_windows(outputs["coeffs70"]), outputs["target_semantics"])
    assert_exact("target_semantics (torch)", semantic_windows(t(outputs["coeffs70"])).numpy(), outputs["target_semantics"])
    assert_exact("source_semantics", source_semantics(inputs["source_coeff_3dmm"][0, :70]), outputs["source_semantics"])
    for i in (0, 5, 22, 44):
        assert_exact(f"semantic_window {i}", semantic_window(outputs["coeffs70"], i), outputs["target_semantics"][i])


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
def test_pose_chunk_plan_covers_each_frame_once(num_frames):
    chunks = plan_pose_chunks(num_frames)
    written = []
    for c in chunks:
        assert c.mel_stop - c.mel_start + c.pad == 32 and c.mel_start >= 1 and c.mel_stop <= num_frames
        assert 1 <= c.keep <= 32
        written.extend(range(c.out_start, c.out_start + c.keep))
    assert written == list(range(1, num_frames))
    rem = (num_frames - 1) % 32
    if rem:
        last = chunks[-1]
        assert last.keep == rem and last.mel_stop == num_frames and last.mel_start == max(1, num_frames - 32)


def test_pose_chunks_stream_and_short_clip_padding(parity_nets, parity_io):
    """Chunk-by-chunk decoding concatenates to the whole-clip result; a clip shorter than one
    chunk is front-padded with its first embedding."""
    _, a2p = parity_nets
    inputs, outputs = parity_io
    ref = t(inputs["source_coeff_3dmm"][:, 64:70])
    style = torch.tensor([7])
    z = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 1, 64)).astype(np.float32))
    mels = t(outputs["indiv_mels"])[None, :, None]
    with torch.inference_mode():
        whole = a2p.predict(mels, ref, style, z=z[:2])["pose_motion_pred"]
        rows = [torch.zeros(1, 1, 6)]
        for k, chunk in enumerate(plan_pose_chunks(45)):
            rows.append(a2p.decode_chunk(a2p.chunk_embedding(mels, chunk), chunk, ref, style, z[k]))
        assert torch.equal(torch.cat(rows, 1), whole)

        short = a2p.predict(mels[:, :20], ref, style, z=z[2:])
        emb = a2p.audio_encoder(mels[:, 1:20])
        padded = torch.cat([emb[:, :1].expand(-1, 13, -1), emb], dim=1)
        manual = a2p.netG.decoder(z[2], style, ref, padded)[:, -19:]
        assert short["pose_motion_pred"].shape == (1, 20, 6)
        assert torch.equal(short["pose_motion_pred"][:, 1:], manual)
        with pytest.raises(ValueError, match="latents"):
            a2p.predict(mels, ref, style, z=z[:1])


def test_smoothing_short_clips():
    rng = np.random.default_rng(2)
    for n in (1, 2):
        x = rng.standard_normal((n, 6)).astype(np.float32)
        assert np.array_equal(smooth_pose(x), x)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    np.testing.assert_allclose(smooth_pose(x), savgol_filter(x.astype(np.float64), 7, 2, axis=0), atol=1e-6)


def test_mel_streaming_windows(parity_io):
    """A window taken from a growing spectrogram is final once the spectrogram reaches its last
    mel frame; mel_window agrees with the vectorised mel_windows."""
    _, outputs = parity_io
    mel = outputs["mel"]
    full = mel_windows(mel, 45)
    for i in range(45):
        assert np.array_equal(mel_window(mel, i), full[i])
        need = last_mel_frame(i) + 1
        if need <= len(mel):
            assert np.array_equal(mel_window(mel[:need], i), full[i])
    # spectrogram frames away from the clip's end depend only on local samples
    wav = outputs["wav_float32_cropped"]
    front = MelFrontend()
    part = front.spectrogram(wav[:16000])
    np.testing.assert_allclose(part[:-3], front.spectrogram(wav)[: len(part) - 3], atol=1e-6)


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
