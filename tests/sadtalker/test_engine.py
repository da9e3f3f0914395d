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
from safetensors.torch import save_file

from vcam_talker import cli
from vcam_talker import config as C
from vcam_talker.engines.sadtalker.audio_hparams import AudioHParams
from vcam_talker.engines.sadtalker.engine import (
    LM3D_STD,
    MAPPING_FILES,
    SadTalkerEngine,
    WeightLayout,
    combined_file,
    feather_mask,
    load_stages,
    source_crop,
)
from vcam_talker.engines.sadtalker.hparams import SadTalkerHParams
from vcam_talker.engines.sadtalker.stream import (
    BlinkSchedule,
    CoefficientStream,
    SourceCoeffs,
    StreamParams,
    clip_coefficients,
)
from vcam_talker.errors import CheckpointError, ConfigError, EngineError
from vcam_talker.stream.windows import ArrayAudio, Windower

from .weight_rule import PARITY, rule_tensor

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


def sadtalker_config(**st) -> C.Config:
    d = C.to_dict(C.Config())
    d["engine"]["name"] = "sadtalker"
    d["engine"]["sadtalker"].update(st)
    return C.from_dict(d)


# --------------------------------------------------------------------------------------------
# Reduced-width fixture: the whole chain through the engine's stages
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_io():
    return np.load(PARITY / "inputs.npz"), np.load(PARITY / "outputs.npz")


def fixture_stages(full: bool = False):
    doc = yaml.safe_load((PARITY / "config.yaml").read_text())
    render_hp = SadTalkerHParams.from_yaml_dict(doc).render
    audio_hp = AudioHParams.from_yaml_dict(doc)
    w = PARITY / "weights.safetensors"
    # the fixture keeps both MappingNets in its one flat file; no face_3drecon in it
    layout = WeightLayout(w, w, mapping_entry=None, mapping_prefix="mapping_full." if full else "mapping.", face_recon=False)
    return load_stages(layout, render_hp, audio_hp, full=full)


@pytest.fixture(scope="module")
def stages():
    return fixture_stages()


@pytest.fixture(scope="module")
def chain(stages, fixture_io):
    inputs, _ = fixture_io
    wav = (inputs["wav_int16"] / 32768).astype(np.float32)
    source = SourceCoeffs.from_row(inputs["source_coeff_3dmm"][0], full=False)
    z = torch.from_numpy(inputs["a2p_z"])
    return clip_coefficients(
        stages.audio, wav, source, style=int(inputs["pose_style"]), ratio=inputs["blink_ratio"], latents=lambda k: z[k]
    ), source


def test_chain_coefficients(chain, fixture_io):
    _, outputs = fixture_io
    res, source = chain
    close("indiv_mels", res["indiv_mels"], outputs["indiv_mels"], atol=1e-5, rtol=0)
    close("exp_coeff", res["exp"], outputs["exp_coeff"])
    close("pose_raw", res["pose_raw"], outputs["pose_raw"])
    close("pose_smoothed", res["pose_smoothed"], outputs["pose_smoothed"])
    close("coeffs70", res["coeffs"], outputs["coeffs70"])
    close("target_semantics", res["windows"], outputs["target_semantics"])
    close("source_semantics", source.source_window(), outputs["source_semantics"])


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
        out = stages.frame(enc["feature_3d"], enc["compressed"], kp_source, kp_driving[frames])
    d = diff("predictions (end to end)", out["prediction"], outputs["predictions"])
    assert d.max() <= 1e-2 and d.mean() <= 1e-4
    dbg = frames.index(int(inputs["debug_frame"]))
    close("dm_occlusion_map", out["occlusion_map"][dbg], outputs["dm_occlusion_map"], atol=1e-3)
    assert diff("dm_deformation", out["deformation"][dbg], outputs["dm_deformation"]).max() <= 5e-3


def test_full_mode_windows_and_mapping(fixture_io):
    """'full' mode appends the source crop (s, tx, ty) to every row and uses the coeff-73 MappingNet."""
    inputs, outputs = fixture_io
    source = SourceCoeffs.from_row(inputs["source_coeff_3dmm"][0], full=True)
    coeffs = np.concatenate([outputs["coeffs70"], np.repeat(source.crop[None], 45, 0)], axis=1)
    from vcam_talker.engines.sadtalker.audio2pose import semantic_windows

    windows = semantic_windows(coeffs)[[0, 22]]
    close("mapping73_input", windows, outputs["mapping73_input"], atol=1e-6)
    full = fixture_stages(full=True)
    with torch.inference_mode():
        motion = full.motion.mapping(torch.from_numpy(windows))
    for f in ("yaw", "pitch", "roll", "t", "exp"):
        ref = outputs[f"mapping73_{f}"]
        close(f"mapping73_{f}", getattr(motion, f), ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_source_crop_geometry(fixture_io):
    """The engine's crop is the reference's; landmarks are mapped into it, not re-detected."""
    inputs, outputs = fixture_io
    crop = source_crop(inputs["pre_full_image_rgb"], inputs["pre_landmarks68_full"], 256)
    assert np.array_equal(crop["source"], outputs["pre_crop256"])
    close("landmarks in the crop", crop["landmarks"], outputs["pre_landmarks68_crop256"], atol=0.05, rtol=0)
    assert tuple(crop["paste_box"][2:]) == tuple(outputs["pre_crop_info_size"])
    assert np.array_equal(LM3D_STD, inputs["lm3d_std_5x3"])


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------


def stream_windows(engine: SadTalkerEngine, wav: np.ndarray, frames, source: SourceCoeffs):
    spec = engine.window_spec
    win = Windower(ArrayAudio(wav, spec.sample_rate), spec, engine.config.video.fps)
    engine.stream.set_source(source)
    out = {}
    for k in frames:
        w = win.window(k)
        engine.stream.ingest(w.samples, int(round(w.t * spec.sample_rate)) - spec.before, k)
        out[k] = engine.stream.window(k, source)
    return out


def test_streaming_reproduces_offline(stages, fixture_io):
    """With lookahead 37 and the reference's 32-frame pose chunks, streamed windows and frames
    equal the offline chain wherever the reference's values depend only on audio already seen
    (frames 0..13 here: window +13, smoothing +6, inside the first pose chunk)."""
    inputs, outputs = fixture_io
    cfg = sadtalker_config(lookahead_frames=37, pose_chunk=32, pose_style=int(inputs["pose_style"]))
    engine = SadTalkerEngine(cfg, stages=stages)
    assert engine.window_spec.after == 37 * 640 + 2120 and engine.stream.p.pose_delay == 0
    ratio = inputs["blink_ratio"][:, 0]
    z = torch.from_numpy(inputs["a2p_z"])
    engine.stream = CoefficientStream(
        stages.audio, engine.stream.p, blink=lambda f: float(ratio[f]) if f < len(ratio) else 0.0,
        latents=lambda b: z[b] if b < len(z) else torch.zeros(64),
    )
    wav = outputs["wav_float32_cropped"]
    source = SourceCoeffs.from_row(inputs["source_coeff_3dmm"][0], full=False)
    windows = stream_windows(engine, wav, range(14), source)
    got = np.stack([windows[k] for k in range(14)])
    close("streamed target_semantics 0..13", got, outputs["target_semantics"][:14])
    assert engine.stream.decodes == 1
    with torch.inference_mode():
        enc = stages.source.encode(torch.from_numpy(inputs["source_image"]))
        kp_source = stages.motion(torch.from_numpy(source.source_window())[None], enc["kp_canonical"])
        kp = stages.motion(torch.from_numpy(got), enc["kp_canonical"])
        close("streamed kp_driving", kp, outputs["kp_driving"][:14], atol=5e-5)
        pred = stages.frame(enc["feature_3d"], enc["compressed"], kp_source, kp[:1])["prediction"]
    d = diff("streamed frame 0", pred[0], outputs["predictions"][0])
    assert d.max() <= 1e-2 and d.mean() <= 1e-4


def test_streaming_low_latency_is_bounded_and_continuous(stages, fixture_io):
    """Default live settings: frames come out from the first window on, state stays bounded,
    the head path is continuous across pose decodes, skipped windows and restarts are handled."""
    inputs, outputs = fixture_io
    engine = SadTalkerEngine(sadtalker_config(), stages=stages)
    st = engine.config.engine.sadtalker
    assert (st.lookahead_frames, st.pose_chunk) == (5, 8)
    spec = engine.window_spec
    assert spec.after == 5 * 640 + 2120 and spec.before >= 1681
    wav = np.tile(outputs["wav_float32_cropped"], 6)  # 270 frames of speech
    source = SourceCoeffs.from_row(inputs["source_coeff_3dmm"][0], full=False)
    windows = stream_windows(engine, wav, range(240), source)
    s = engine.stream
    assert s.decodes >= 240 // 8 and s.resyncs == 0
    assert len(s._exp_emb) <= 140 and len(s._mel) < 120 and len(s._audio) < 2000
    pose = np.stack([windows[k][64:70, 13] for k in range(40, 240)])  # past the start-up
    assert np.isfinite(pose).all()

    def roughness(track):  # largest frame-to-frame step relative to the range, per channel
        return np.abs(np.diff(track, axis=0)).max(axis=0) / np.ptp(track, axis=0)

    offline = clip_coefficients(stages.audio, wav[: 240 * 640], source, style=0)["pose_smoothed"][40:]
    print("pose roughness streamed", roughness(pose), "offline", roughness(offline))
    assert (roughness(pose) <= 1.25 * roughness(offline).max()).all()
    # blinks reach the expression net through the ratio, at 10..69-frame gaps
    ratios = np.array(s._ratio)
    assert ratios.max() == 1.0 and 0 < (ratios == 1.0).sum()
    # a slow consumer skips windows: past the overlap the timeline restarts, keeping the pose
    w = stream_windows(engine, wav, [260], source)[260]
    assert s.resyncs == 1 and np.isfinite(w).all()
    # time going backwards is a new stream
    stream_windows(engine, wav, [0], source)
    assert s.resyncs == 1 and s.frames_ready <= 1 + 5 + 2


def test_blink_schedule_matches_reference_shape():
    b = BlinkSchedule(3)
    r = np.array([b.ratio(i) for i in range(2000)])
    starts = np.flatnonzero((r[1:] == 0.5) & (r[:-1] == 0))
    assert len(starts) > 20
    for s in starts[:5]:
        assert r[s + 1 : s + 6].tolist() == [0.5, 0.9, 1.0, 0.9, 0.5]
    gaps = np.diff(starts) - 5
    assert gaps.min() >= 10 and gaps.max() < 70
    assert not any(BlinkSchedule(3, enabled=False).ratio(i) for i in range(200))


def test_stream_params_windows():
    p = StreamParams(lookahead=0)
    assert p.window_samples(25) == (1881, 2120)
    before, after = StreamParams(lookahead=2).window_samples(30)
    assert after == 2 * 640 + 2120 + 320
    before, after = StreamParams(lookahead=0).window_samples(2)
    assert before + after > 16000 / 2  # consecutive windows touch at low frame rates


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
        sadtalker_config(preprocess="extcrop")


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


def write_official_weights(directory: Path) -> None:
    """Rule weights for every key of the real files (official_full_keys.json): the combined
    safetensors (training-only audio2pose parts included) and both MappingNet .pth.tar files
    with the state under 'mapping' next to another entry."""
    doc = json.loads((PARITY / "official_full_keys.json").read_text())
    sections = {k.split(" ")[0]: v for k, v in doc.items() if isinstance(v, dict)}
    combined = {k: torch.from_numpy(rule_tensor(k, shape)) for k, (shape, _) in sections[combined_file(256)].items()}
    save_file(combined, str(directory / combined_file(256)))
    del combined
    for name in MAPPING_FILES.values():
        state = {k: torch.from_numpy(rule_tensor("mapping." + k, shape)) for k, (shape, _) in sections[name].items()}
        save_padded({"mapping": state}, directory / name, manifest_size(name))


def manifest_size(name: str) -> int | None:
    """The real file's size from the weights manifest (the engine's presence check compares it)."""
    try:
        from vcam_talker import weights
    except ImportError:
        return None
    return next((e.size for e in weights.load_manifest().files if e.name == name), None)


def save_padded(obj: dict, path: Path, size: int | None) -> None:
    """torch.save ``obj`` plus filler so the file has exactly ``size`` bytes, as the real
    MappingNet files carry ~115 MB of other state next to 'mapping'. Records are 64-byte
    aligned, so the last few bytes go into the zip comment."""
    torch.save(obj, path)
    if size is None:
        return
    n = size - path.stat().st_size - 4096
    torch.save({**obj, "other_state": torch.zeros(max(n, 0), dtype=torch.uint8)}, path)
    data = bytearray(path.read_bytes())
    rest = size - len(data)
    assert 0 <= rest < 65536 and data[-22:-18] == b"PK\x05\x06", "unexpected torch.save layout"
    data[-2:] = rest.to_bytes(2, "little")  # end-of-central-directory comment length
    path.write_bytes(bytes(data) + b"#" * rest)


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sadtalker_weights")
    write_official_weights(d)
    return d


@pytest.fixture(scope="module")
def full_engine(official_dir, tmp_path_factory):
    import os

    old = os.environ.get("VCAM_TALKER_CACHE")
    os.environ["VCAM_TALKER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    cfg = sadtalker_config(weights_dir=str(official_dir), preprocess="full", device="cpu")
    engine = SadTalkerEngine(cfg)
    yield engine
    engine.close()
    if old is None:
        os.environ.pop("VCAM_TALKER_CACHE", None)
    else:
        os.environ["VCAM_TALKER_CACHE"] = old


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
    # enhancer without its weights
    with pytest.raises(EngineError, match="GFPGANv1.4.pth"):
        SadTalkerEngine(sadtalker_config(weights_dir=str(official_dir), enhancer="gfpgan", device="cpu"))
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
