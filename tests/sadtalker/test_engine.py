"""The sadtalker engine: chain parity, streaming, refusals, and a full-size load.

- ``sadtalker_parity/`` (reduced widths, shipped weights): the engine's own stages, built by
  the production loader from the fixture's config, run the whole chain wav → frames and
  match the reference (per stage 1e-4; frames max 1e-2, mean 1e-4). The streaming timeline
  reproduces the offline windows wherever the reference's output is determined by the audio
  seen so far.
- Refusals: missing weights (engine and CLI), a truncated checkpoint, options that cannot run.
- Full size: random weights at the official shapes, in the official file layout; the engine
  loads them, prepares the bundled avatar and renders real speech.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from vcam_talker import cli
from vcam_talker.engines.sadtalker.composite import feather_mask
from vcam_talker.engines.sadtalker.engine import SadTalkerEngine
from vcam_talker.engines.sadtalker.files import MAPPING_FILES, combined_file
from vcam_talker.engines.sadtalker.source import LM3D_STD, source_crop
from vcam_talker.engines.sadtalker.presets import TimelineParams
from vcam_talker.engines.sadtalker.timeline import SourceCoeffs, clip_coefficients, clip_timeline
from vcam_talker.errors import CheckpointError, ConfigError, EngineError
from vcam_talker.stream.windows import ArrayAudio, Windower

from .official_weights import sadtalker_config
from .parity_build import fixture_stages
from .weight_rule import PARITY

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_AVATAR = ROOT / "avatars" / "default.png"


def diff(name: str, ours, ref: np.ndarray) -> np.ndarray:
    got = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    d = np.abs(got.astype(np.float64) - ref)
    print(f"{name}: max|diff| {d.max():.3g}, mean {d.mean():.3g}")
    return d


def close(name: str, ours, ref: np.ndarray, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    got = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    diff(name, got, ref)
    np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol, err_msg=name)


# --------------------------------------------------------------------------------------------
# Reduced-width fixture: the whole chain through the engine's stages
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_io():
    return np.load(PARITY / "inputs.npz"), np.load(PARITY / "outputs.npz")


@pytest.fixture(scope="module")
def stages():
    return fixture_stages()


@pytest.fixture(scope="module")
def chain(stages, fixture_io):
    inputs, _ = fixture_io
    wav = (inputs["wav_int16"] / 32768).astype(np.float32)
    source = SourceCoeffs.from_row(inputs["source_coeff_3dmm"][0], full=False)
    z = torch.from_numpy(inputs["a2p_z"])
    params = TimelineParams(style=int(inputs["pose_style"]))
    return clip_coefficients(stages.audio, wav, source, params, ratio=inputs["blink_ratio"], latents=lambda k: z[k]), source


def test_source_semantics(chain, fixture_io):
    # the chain's coefficients, every frame, are pinned in test_clip_parity.py
    close("source_semantics", chain[1].source_window(), fixture_io[1]["source_semantics"])


def test_chain_to_frames(stages, chain, fixture_io):
    inputs, outputs = fixture_io
    res, source = chain
    with torch.inference_mode():
        enc = stages.source.encode(torch.from_numpy(inputs["source_image"]))
        close("kp_canonical", enc["kp_canonical"][0], outputs["kp_canonical"], atol=5e-5)
        close("gen_feature_3d", enc["feature_3d"][0], outputs["gen_feature_3d"])
        close("dm_compressed_feature", enc["compressed"][0], outputs["dm_compressed_feature"])
        kp_source = stages.motion(torch.from_numpy(source.source_window())[None], enc["kp_canonical"])
        close("kp_source", kp_source[0], outputs["kp_source"], atol=5e-5)
        kp_driving = stages.motion(torch.from_numpy(res["windows"]), enc["kp_canonical"])
        close("kp_driving", kp_driving, outputs["kp_driving"], atol=5e-5)
        frames = [int(f) for f in inputs["generator_frames"]]
        pred = stages.frame(enc["feature_3d"], enc["compressed"], kp_source, kp_driving[frames])
        # the intermediates: the generator itself (the frame stage returns only the image)
        b = len(frames)
        out = stages.source.generator.forward_from_features(
            enc["feature_3d"].expand(b, -1, -1, -1, -1), kp_source.expand(b, -1, -1), kp_driving[frames],
            compressed=enc["compressed"].expand(b, -1, -1, -1, -1))
    assert torch.equal(pred, out["prediction"])
    d = diff("predictions (end to end)", pred, outputs["predictions"])
    assert d.max() <= 1e-2 and d.mean() <= 1e-4
    dbg = frames.index(int(inputs["debug_frame"]))
    close("dm_occlusion_map", out["occlusion_map"][dbg], outputs["dm_occlusion_map"], atol=1e-3)
    assert diff("dm_deformation", out["deformation"][dbg], outputs["dm_deformation"]).max() <= 5e-3


def test_full_mode_windows_and_mapping(stages, fixture_io):
    """'full' mode appends the source crop (s, tx, ty) to every row and uses the coeff-73 MappingNet."""
    inputs, outputs = fixture_io
    source = SourceCoeffs.from_row(inputs["source_coeff_3dmm"][0], full=True)
    z = torch.from_numpy(inputs["a2p_z"])
    wav = (inputs["wav_int16"] / 32768).astype(np.float32)
    tl = clip_timeline(stages.audio, wav, source, TimelineParams(style=int(inputs["pose_style"])),
                       ratio=inputs["blink_ratio"], latents=lambda k: z[k])
    windows = np.stack([tl.window(0, source), tl.window(22, source)])
    close("mapping73_input", windows, outputs["mapping73_input"])
    full = fixture_stages(full=True)
    with torch.inference_mode():
        motion = full.motion.mapping(torch.from_numpy(windows))
    for f in ("yaw", "pitch", "roll", "t", "exp"):
        ref = outputs[f"mapping73_{f}"]
        close(f"mapping73_{f}", getattr(motion, f), ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_source_crop_geometry(fixture_io):
    """The engine's crop of a photo is the reference's; the photo's landmarks map into it
    where the reference re-detects them (the engine re-detects too, see test_source.py)."""
    inputs, outputs = fixture_io
    crop = source_crop(inputs["pre_full_image_rgb"], inputs["pre_landmarks68_full"], 256)
    assert np.array_equal(crop["source"], outputs["pre_crop256"])
    close("landmarks in the crop", crop["landmarks"], outputs["pre_landmarks68_crop256"], atol=0.05, rtol=0)
    x0, y0, x1, y1 = crop["box"]
    assert (x1 - x0, y1 - y0) == tuple(outputs["pre_crop_info_size"])
    assert np.array_equal(LM3D_STD, inputs["lm3d_std_5x3"])



def test_feather_mask():
    m = feather_mask(100, 80)
    assert m.shape == (80, 100, 1) and m[40, 50, 0] == 1.0
    assert m[0, 50, 0] < 0.05 and m[40, 0, 0] < 0.05


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------


def test_config_fields():
    with pytest.raises(ConfigError, match=r"engine\.sadtalker\.size: must be 256 or 512, got 300"):
        sadtalker_config(size=300)
    with pytest.raises(ConfigError, match=r"engine\.sadtalker\.pose_style: must be 0\.\.45, got 46"):
        sadtalker_config(pose_style=46)
    with pytest.raises(ConfigError, match=r"engine\.sadtalker\.preprocess"):
        sadtalker_config(preprocess="seamless")
    with pytest.raises(ConfigError, match=r"engine\.sadtalker\.yaw: must be -90\.0\.\.90\.0, got 120\.0"):
        sadtalker_config(yaw=120)
    assert sadtalker_config(pitch=-7).engine.sadtalker.pitch == -7.0


def test_missing_weights_refused(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    with pytest.raises(EngineError) as err:
        SadTalkerEngine(sadtalker_config(weights_dir=str(empty), device="cpu"))
    msg = str(err.value)
    assert "\n" not in msg and str(empty) in msg
    for name in (combined_file(256), *MAPPING_FILES.values()):
        assert name in msg
    assert "vcam-talker weights download --only sadtalker-256" in msg


def test_missing_weights_cli(tmp_path, capsys, speech_wav):
    empty = tmp_path / "weights"
    empty.mkdir()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"engine": {"name": "sadtalker", "sadtalker": {"weights_dir": "weights"}}}))
    rc = cli.main(["render", "--config", str(cfg), "--audio", str(speech_wav), "--out", str(tmp_path / "o.mp4"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert combined_file(256) in err[0] and "vcam-talker weights download --only sadtalker-256" in err[0]
    assert not (tmp_path / "o.mp4").exists()


def test_half_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(EngineError, match="half"):
        SadTalkerEngine(sadtalker_config(weights_dir=str(tmp_path), half=True))


# --------------------------------------------------------------------------------------------
# Full size: random weights at the official shapes, official layout
# --------------------------------------------------------------------------------------------


def test_full_size_prepare_and_render(full_engine, speech_wav, monkeypatch):
    engine = full_engine
    av = engine.prepare(DEFAULT_AVATAR)
    d = av.data
    assert d["feature_3d"].shape == (32, 16, 64, 64) and d["compressed"].shape == (4, 16, 64, 64)
    assert d["kp_canonical"].shape == (15, 3) and d["kp_source"].shape == (15, 3)
    assert d["coeff"].shape == (73,) and d["source"].shape == (256, 256, 3)
    again = engine.prepare(DEFAULT_AVATAR)
    assert again.from_cache and np.array_equal(again.data["feature_3d"], d["feature_3d"])

    # per frame, nothing may look at the source image or its networks again
    def refuse(*a, **k):
        raise AssertionError("source-only work ran during render")

    src = engine.stages.source
    monkeypatch.setattr(src.generator, "encode_source", refuse)
    monkeypatch.setattr(src.kp_detector, "forward", refuse)
    monkeypatch.setattr(src.face_recon, "forward", refuse)
    av.data["source"] = None

    wav, rate = sf.read(speech_wav, dtype="float32")
    spec = engine.window_spec
    win = Windower(ArrayAudio(wav, rate), spec, engine.config.video.fps)
    before = av.image.copy()
    x0, y0, w, h = (int(v) for v in d["paste_box"])
    engine.reset()
    for i in (0, 1):
        frame = engine.render(win.window(40 + i), av)  # speech, mid-sentence
        assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
        outside = np.ones(frame.shape[:2], bool)
        outside[y0 : y0 + h, x0 : x0 + w] = False
        assert np.array_equal(frame[outside], before[outside])
        assert not np.array_equal(frame[y0 : y0 + h, x0 : x0 + w], before[y0 : y0 + h, x0 : x0 + w])
    assert np.array_equal(av.image, before)


def test_full_size_refusals(official_dir, tmp_path):
    # a truncated checkpoint, then one of the right size with a damaged header: one line naming the file
    bad = tmp_path / "weights"
    bad.mkdir()
    for name in MAPPING_FILES.values():
        (bad / name).symlink_to(official_dir / name)
    data = bytearray((official_dir / combined_file(256)).read_bytes())
    target = bad / combined_file(256)
    target.write_bytes(data[: len(data) // 3])
    with pytest.raises(EngineError) as err:
        SadTalkerEngine(sadtalker_config(weights_dir=str(bad), device="cpu"))
    msg = str(err.value)
    assert "\n" not in msg and f"{combined_file(256)} (incomplete" in msg and "weights download" in msg
    data[8:64] = b"\xff" * 56
    target.write_bytes(data)
    del data
    with pytest.raises(CheckpointError) as err:
        SadTalkerEngine(sadtalker_config(weights_dir=str(bad), device="cpu"))
    msg = str(err.value)
    assert "\n" not in msg and combined_file(256) in msg and "corrupt" in msg


def test_render_cli_end_to_end_with_full_size_random_weights(official_dir, tmp_path, speech_wav, monkeypatch):
    """`vcam-talker render --engine sadtalker` with random official-shape weights: the mp4
    has the asked size, fps, frame count and duration (looks cannot be judged without the
    real weights). 0.4 s at 5 fps keeps the CPU time to two generator runs."""
    import subprocess

    monkeypatch.setenv("VCAM_TALKER_CACHE", str(tmp_path / "cache"))
    wav, rate = sf.read(speech_wav, dtype="float32")
    clip = tmp_path / "clip.wav"
    sf.write(clip, wav[int(0.5 * rate):int(0.9 * rate)], rate)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"engine": {"sadtalker": {"weights_dir": str(official_dir), "device": "cpu"}}}))
    out = tmp_path / "st.mp4"
    rc = cli.main(["render", "--config", str(cfg), "--engine", "sadtalker", "--audio", str(clip), "--out", str(out),
                   "--fps", "5", "--size", "128x128", "-q"])
    assert rc == 0
    info = json.loads(subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format",
                                      "-of", "json", str(out)], capture_output=True, text=True, check=True).stdout)
    v = next(s for s in info["streams"] if s["codec_type"] == "video")
    a = next(s for s in info["streams"] if s["codec_type"] == "audio")
    assert (v["width"], v["height"], v["r_frame_rate"], int(v["nb_read_frames"])) == (128, 128, "5/1", 2)
    assert int(a["sample_rate"]) == rate
    assert abs(float(info["format"]["duration"]) - 0.4) <= 0.2 + 0.05  # within one frame (plus AAC padding)
