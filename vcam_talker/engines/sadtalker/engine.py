"""SadTalkerEngine: our SadTalker networks behind the :class:`Engine` interface.

One resident object per stage, built once from the checkpoints:

- :class:`AudioStage`: audio2exp and audio2pose (mel windows → expression, head motion);
- :class:`SourceStage`: face reconstruction (3DMM), keypoint detector, and the generator's
  source encoder: everything that depends only on the avatar, run by ``prepare``;
- :class:`MotionStage`: MappingNet + keypoint transformation (semantic window → keypoints);
- :class:`FrameStage`: dense motion + SPADE decoder on the cached source volume.

``prepare`` stores the crop (cut from the photo itself, :mod:`.source`), the 3DMM row, the
keypoints and the source feature volume in the avatar cache; ``render`` never touches the
source image again except for paste-back (:mod:`.composite`). The
coefficient timeline (lookahead, pose chunks, blinks) lives in :mod:`.timeline`; catch-up
batches and the warm-up in :mod:`.batch`; precision, memory format and compile in :mod:`.accel`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vcam_talker.avatar import PreparedAvatar, prepare_avatar
from vcam_talker.config import Config, SadTalkerConfig
from vcam_talker.engines.base import Engine
from vcam_talker.errors import CheckpointError, EngineError
from vcam_talker.frames import AudioWindow, WindowSpec
from vcam_talker.stream.windows import frame_count

from .audio2exp import Audio2Exp
from .audio2pose import Audio2Pose
from .audio_hparams import AudioHParams
from .checkpoint import load_strict, read_state_dict, split_prefix, training_only_prefixes
from .face_recon import FaceReconNet, recon_input
from .accel import compile_cache, compile_fn, precision_name, resolve_precision, use_channels_last
from .batch import predictions, render_batch, to_uint8, warm_up
from .composite import Cover, Paste, display
from .files import check_weights, combined_file, folder_hparams, is_full, mapping_file
from .generator import OcclusionAwareSPADEGenerator
from .hparams import RenderHParams
from .keypoints import KPDetector, transform_keypoints
from .mapping import MappingNet
from .source import precompute
from .presets import TimelineParams, coeff_frame
from .randomness import BlinkSchedule, Latents, reference_blinks
from .timeline import CoefficientTimeline, SourceCoeffs, clip_timeline

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: bump when the prepared arrays change meaning (st-2: the source is cut from the photo)
PREP_VERSION = "st-2"
#: prefixes of the combined file; anything else in it is an error
COMBINED_PREFIXES = ("kp_extractor.", "generator.", "audio2exp.", "audio2pose.", "face_3drecon.")


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


class AudioStage:
    """audio2exp + audio2pose, float32 on ``device``. Mel windows are N×80×16 float32."""

    def __init__(self, a2e: Audio2Exp, a2p: Audio2Pose, device: torch.device) -> None:
        self.a2e, self.a2p, self.device = a2e, a2p, device
        self.seq_len = a2p.params.seq_len

    def exp_embed(self, mels: torch.Tensor) -> torch.Tensor:
        """N×80×16 -> N×c4 audio embeddings (CPU)."""
        return self.a2e.embed(mels.to(self.device)[:, None]).cpu()

    def exp_head(self, emb: torch.Tensor, ref_exp: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """emb N×c4, ref_exp N×64, ratio N×1 -> N×64 expression coefficients (CPU)."""
        d = self.device
        return self.a2e.head(emb.to(d), ref_exp.to(d), ratio.to(d)).cpu()

    def pose_embed(self, mels: torch.Tensor) -> torch.Tensor:
        """N×80×16 -> N×c4 pose-encoder embeddings (CPU)."""
        return self.a2p.audio_encoder(mels.to(self.device)[None, :, None])[0].cpu()

    def pose_decode(self, emb: torch.Tensor, ref_pose: torch.Tensor, style: int, z: torch.Tensor) -> torch.Tensor:
        """emb seq_len×c4, ref_pose 6, z 64 -> seq_len×6 head motion (CPU)."""
        d = self.device
        style_t = torch.tensor([int(style)], device=d)
        return self.a2p.netG.decoder(z.to(d)[None], style_t, ref_pose.to(d)[None], emb.to(d)[None])[0].cpu()


class SourceStage:
    """Per-avatar networks: 3DMM reconstruction, canonical keypoints, source encoding."""

    def __init__(
        self,
        kp_detector: KPDetector,
        generator: OcclusionAwareSPADEGenerator,
        face_recon: FaceReconNet | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.kp_detector, self.generator, self.face_recon = kp_detector, generator, face_recon
        self.device, self.dtype = device, dtype

    def coefficients(self, image224: np.ndarray) -> np.ndarray:
        """224×224×3 uint8 aligned crop -> 257 3DMM coefficients (float32)."""
        if self.face_recon is None:
            raise EngineError("sadtalker: this engine was built without the face reconstruction net")
        return self.face_recon(recon_input(image224).to(self.device))[0].float().cpu().numpy()

    def encode(self, source: torch.Tensor) -> dict[str, torch.Tensor]:
        """source 1×3×S×S in [0,1] -> ``kp_canonical`` 1×K×3 (float32), ``feature_3d``
        1×Cf×D×S/4×S/4 and ``compressed`` 1×C×D×S/4×S/4 (generator dtype)."""
        src = source.to(self.device)
        kp = self.kp_detector(src.float())
        feature = self.generator.encode_source(src.to(self.dtype))
        return {"kp_canonical": kp, "feature_3d": feature, "compressed": self.generator.compress_source(feature)}


class MotionStage:
    """MappingNet + keypoint transformation, float32.

    windows B×C×27 -> keypoints B×K×3, given the canonical keypoints 1×K×3.
    """

    def __init__(self, mapping: MappingNet, device: torch.device) -> None:
        self.mapping, self.device = mapping, device

    def __call__(self, windows: torch.Tensor, kp_canonical: torch.Tensor, *, yaw: float | None = None,
                 pitch: float | None = None, roll: float | None = None) -> torch.Tensor:
        """yaw, pitch, roll: degrees replacing the mapped head angles (the reference's
        ``--input_yaw`` etc., for driving keypoints only); None keeps the mapped one."""
        motion = self.mapping(windows.to(self.device).float())
        return transform_keypoints(kp_canonical.to(self.device), motion, yaw=yaw, pitch=pitch, roll=roll)


class FrameStage:
    """The generator's per-frame part on a cached source.

    feature_3d 1×Cf×D×h×w, compressed 1×C×D×h×w (generator dtype), kp_source / kp_driving
    B×K×3 -> dict with ``prediction`` B×3×4h×4w in (0, 1) and the intermediates.
    """

    def __init__(self, generator: OcclusionAwareSPADEGenerator, dtype: torch.dtype, compile: bool | str = False) -> None:
        self.generator, self.dtype = generator, dtype
        self._fn: Callable[..., dict[str, torch.Tensor]] = self._run
        self.compiled = bool(compile)
        # compiled graphs (CUDA graphs above all) are not re-entrant; a swap's warm-up runs in
        # another thread than the live frames
        self._lock = threading.Lock()
        if compile:
            self._fn = compile_fn(self._run, compile if isinstance(compile, str) else "default")

    def _run(self, feature_3d, compressed, kp_source, kp_driving):
        return self.generator.forward_from_features(feature_3d, kp_source, kp_driving, compressed=compressed)

    def __call__(self, feature_3d, compressed, kp_source, kp_driving) -> dict[str, torch.Tensor]:
        b = kp_driving.shape[0]
        kp_s = kp_source.float().expand(b, -1, -1)  # keypoint geometry stays float32 (generator.py)
        with self._lock:
            out = self._fn(feature_3d.expand(b, -1, -1, -1, -1), compressed.expand(b, -1, -1, -1, -1), kp_s,
                           kp_driving.float())
            # CUDA graphs reuse their output memory on the next replay: copy out under the lock
            return {k: v.clone() for k, v in out.items()} if self.compiled else out


@dataclass
class Stages:
    """Every resident stage plus what built them."""

    audio: AudioStage
    source: SourceStage
    motion: MotionStage
    frame: FrameStage
    render_hp: RenderHParams
    audio_hp: AudioHParams
    full: bool
    device: torch.device
    dtype: torch.dtype


@dataclass(frozen=True)
class WeightLayout:
    """Where each network's weights are.

    combined: the flat file with ``kp_extractor.``, ``generator.``, ``audio2exp.``,
    ``audio2pose.`` (and ``face_3drecon.``) keys. mapping: the MappingNet file; with
    ``mapping_entry`` (official ``.pth.tar``) the state is that dict entry, otherwise the
    ``mapping_prefix`` keys of a flat file (the parity fixture keeps them in ``combined``).
    """

    combined: Path
    mapping: Path
    mapping_entry: str | None = "mapping"
    mapping_prefix: str = ""
    face_recon: bool = True


def _empty(ctor: Callable[[], nn.Module]) -> nn.Module:
    # built on the meta device: skipping random init saves seconds at official widths
    with torch.device("meta"):
        module = ctor()
    return module.to_empty(device="cpu")


def _load(ctor: Callable[[], nn.Module], state: dict, source: str, prefix: str, ignore: tuple[str, ...] = ()) -> nn.Module:
    module = _empty(ctor)
    load_strict(module, split_prefix(state, prefix), source=f"{source}:{prefix}", ignore_prefixes=ignore)
    return module.eval()


def load_stages(
    layout: WeightLayout,
    render_hp: RenderHParams = RenderHParams(),
    audio_hp: AudioHParams = AudioHParams(),
    *,
    full: bool = False,
    device: str | torch.device = "cpu",
    half: bool = False,
    compile: bool | str = False,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Stages:
    """Build every stage and fill it strictly from ``layout`` (CheckpointError naming the
    file on any corrupt file or missing/unexpected key). full: use the coeff-73 MappingNet.
    dtype: the generator's (default float32, float16 with ``half``); compile: False, True or
    a torch.compile mode; channels_last: NHWC for the 2-D part (:mod:`.accel`)."""
    device = torch.device(device)
    dtype = dtype or (torch.float16 if half else torch.float32)
    name = layout.combined.name
    state = read_state_dict(layout.combined)
    known = COMBINED_PREFIXES + ((layout.mapping_prefix, "mapping.", "mapping_full.") if layout.mapping_entry is None else ())
    stray = sorted(k for k in state if not k.startswith(known))
    if stray:
        more = f" (+{len(stray) - 5} more)" if len(stray) > 5 else ""
        raise CheckpointError(f"{name}: unexpected keys outside the known networks: {', '.join(stray[:5])}{more}")
    hp = render_hp
    kp = _load(lambda: KPDetector(hp.kp_detector, hp.common), state, name, "kp_extractor.")
    gen = _load(lambda: OcclusionAwareSPADEGenerator(hp.generator, hp.common), state, name, "generator.")
    a2e = _load(lambda: Audio2Exp(audio_hp.audio2exp), state, name, "audio2exp.")
    a2p = _load(lambda: Audio2Pose(audio_hp.audio2pose), state, name, "audio2pose.", training_only_prefixes("audio2pose."))
    recon = _load(FaceReconNet, state, name, "face_3drecon.") if layout.face_recon else None
    map_hp = hp.mapping_full if full else hp.mapping
    if layout.mapping_entry is None:
        mapping = _load(lambda: MappingNet(map_hp), state, name, layout.mapping_prefix)
    else:
        del state
        mstate = read_state_dict(layout.mapping, entry=layout.mapping_entry)
        mapping = _load(lambda: MappingNet(map_hp), mstate, layout.mapping.name, "")
    for m in (kp, a2e, a2p, mapping, recon):
        if m is not None:
            m.to(device)
    gen.to(device=device, dtype=dtype)
    if channels_last:
        use_channels_last(gen)
    return Stages(
        audio=AudioStage(a2e, a2p, device),
        source=SourceStage(kp, gen, recon, device, dtype),
        motion=MotionStage(mapping, device),
        frame=FrameStage(gen, dtype, compile),
        render_hp=hp,
        audio_hp=audio_hp,
        full=full,
        device=device,
        dtype=dtype,
    )


# --------------------------------------------------------------------------------------------
# Per-avatar state (preparation: :mod:`.source`; compositing: :mod:`.composite`)
# --------------------------------------------------------------------------------------------


@dataclass
class AvatarContext:
    """One prepared avatar's arrays, on the device, ready for every frame."""

    image: np.ndarray
    coeffs: SourceCoeffs
    kp_canonical: torch.Tensor
    kp_source: torch.Tensor
    feature_3d: torch.Tensor
    compressed: torch.Tensor
    #: puts a face into the frame (see :mod:`.composite`)
    show: Paste | Cover


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


def timeline_params(st: SadTalkerConfig, seq_len: int, audio_hp: AudioHParams) -> TimelineParams:
    """The streaming timeline of ``engine.sadtalker``: its preset, or lookahead_frames and
    pose_chunk when the preset is ``custom``."""
    common = dict(style=st.pose_style, still=st.still, expression_scale=st.expression_scale, mel=audio_hp.mel)
    if st.preset == "custom":
        return TimelineParams(lookahead=st.lookahead_frames, pose_chunk=min(st.pose_chunk, seq_len), **common)
    return TimelineParams.preset(st.preset, **common)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EngineError("engine.sadtalker.device: cuda requested but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


class SadTalkerEngine(Engine):
    """SadTalker as a streaming engine; config in ``engine.sadtalker``."""

    name = "sadtalker"

    def __init__(self, config: Config, *, stages: Stages | None = None) -> None:
        self.config = config
        st: SadTalkerConfig = config.engine.sadtalker
        self.st = st
        #: 'full'/'extfull': paste into the photo, coeff-73 MappingNet
        self.full = is_full(st.preprocess)
        #: fixed head angles (degrees) replacing the driving ones; None: audio-driven
        self.head_angles = {"yaw": st.yaw, "pitch": st.pitch, "roll": st.roll}
        if stages is None:
            device = resolve_device(st.device)
            dtype = resolve_precision(precision_name(st), device)
            if st.compile:
                compile_cache(config.cache_dir())
            directory = self.weights_dir = check_weights(config)
            layout = WeightLayout(directory / combined_file(st.size), directory / mapping_file(st.preprocess))
            folder = folder_hparams(directory)  # non-official widths (and face size), if declared
            hp = (folder.render, folder.audio) if folder else ()
            stages = load_stages(layout, *hp, full=self.full, device=device, dtype=dtype,
                                 compile=st.compile and st.compile_mode, channels_last=st.channels_last)
            self.weights_id = _files_identity([layout.combined, layout.mapping] + ([folder.path] if folder else []))
            face_size = folder.image_size if folder and folder.image_size else st.size
        else:
            self.weights_dir = None
            self.weights_id = "custom"
            face_size = st.size
        self.stages = stages
        self.size = face_size
        params = timeline_params(st, stages.audio.seq_len, stages.audio_hp)
        before, after = params.window_samples(config.video.fps)
        self._spec = WindowSpec(SAMPLE_RATE, before / SAMPLE_RATE, after / SAMPLE_RATE)
        self.timeline = CoefficientTimeline(
            stages.audio, params, ratio=BlinkSchedule(st.seed, st.blink), latents=Latents(st.seed + 1)
        )
        self._detector = None
        self._contexts: OrderedDict[int, AvatarContext] = OrderedDict()
        self._last: tuple[int, int, np.ndarray] | None = None
        #: seconds of each warm-up frame of the last ``prepare`` (:func:`.batch.warm_up`)
        self.warmup_s: list[float] = []

    # -- Engine interface -------------------------------------------------------------------

    @property
    def window_spec(self) -> WindowSpec:
        return self._spec

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.config.video.width, self.config.video.height

    def detector(self):
        if self._detector is None:
            from vcam_talker.avatar.landmarks import shared_detector

            self._detector = shared_detector(self.config.avatar.landmarks)
        return self._detector

    def prepare(self, image_path: str | Path) -> PreparedAvatar:
        """Source crop from the photo, 3DMM coefficients, keypoints and the source feature
        volume, through the cache (:mod:`.source`)."""
        tag = f"{PREP_VERSION}-{self.size}-{self.st.preprocess}-{self.weights_id}"
        mode = self.st.preprocess
        avatar = prepare_avatar(
            Path(image_path),
            self.config,
            self.name,
            precompute=lambda av: precompute(self.stages, av, self.size, mode, self.full, self.detector),
            detector=self.detector,
            cache_tag=tag,
        )
        if self.st.warmup_frames:
            # compilation and cuDNN autotuning happen per shape: warm every frame count up on
            # CUDA or when compiled; eager on a CPU only initialises oneDNN: one frame does
            slow_start = self.stages.device.type == "cuda" or self.stages.frame.compiled
            n = self.st.warmup_frames if slow_start else 1
            self.warmup_s = warm_up(self, avatar, n, self.st.catch_up_batch if slow_start else 1)
        return avatar

    def context(self, avatar: PreparedAvatar) -> AvatarContext:
        """The avatar's arrays on the device (built once per avatar; two kept for swaps)."""
        key = id(avatar)
        ctx = self._contexts.get(key)
        if ctx is not None and ctx.image is avatar.image:
            return ctx
        d, s = avatar.data, self.stages
        dev, dt = s.device, s.dtype
        ctx = AvatarContext(
            image=avatar.image,
            coeffs=SourceCoeffs.from_row(d["coeff"], self.full),
            kp_canonical=torch.from_numpy(d["kp_canonical"])[None].to(dev),
            kp_source=torch.from_numpy(d["kp_source"])[None].to(dev),
            feature_3d=torch.from_numpy(d["feature_3d"])[None].to(dev, dt),
            compressed=torch.from_numpy(d["compressed"])[None].to(dev, dt),
            show=display(self.full, avatar.image, d, self.size),
        )
        self._contexts[key] = ctx
        while len(self._contexts) > 2:
            self._contexts.popitem(last=False)
        return ctx

    def coefficient_window(self, window: AudioWindow, source: SourceCoeffs) -> tuple[int, np.ndarray]:
        """Feed one audio window to the streaming timeline: (clip frame shown, its C×27 window)."""
        centre = int(round(window.t * window.sample_rate))
        self.timeline.set_source(source)
        self.timeline.ingest(window.samples, centre - self._spec.before, window.end)
        frame = coeff_frame(window.t)
        return self.timeline.clip_frame(frame), self.timeline.window(frame, source)

    def render(self, window: AudioWindow, avatar: PreparedAvatar) -> np.ndarray:
        ctx = self.context(avatar)
        frame, semantic = self.coefficient_window(window, ctx.coeffs)
        return self._frame(frame, semantic, ctx)

    #: the live worker may hand a backlog of windows to ``render_batch`` (:mod:`.batch`)
    batch_catch_up = True

    def render_batch(self, windows: list[AudioWindow], avatar: PreparedAvatar) -> list[np.ndarray]:
        return render_batch(self, windows, avatar)

    def render_clip(self, samples: np.ndarray, avatar: PreparedAvatar, fps: int) -> Iterator[np.ndarray]:
        """The offline form: the whole clip's coefficients as the reference computes them
        (remainder pose chunk, end clamping, the short-clip blink rule), then one frame per
        video frame; video frame i shows coefficient frame round(25 i / fps), the last one past
        the clip's end. samples: 16 kHz float32 mono."""
        ctx = self.context(avatar)
        tl = clip_timeline(self.stages.audio, samples, ctx.coeffs, self.timeline.p,
                           ratio=self.clip_blinks(len(samples)), latents=Latents(self.st.seed + 1))
        for i in range(frame_count(len(samples), SAMPLE_RATE, fps)):
            frame = tl.clip_frame(coeff_frame(i / fps))
            yield self._frame(frame, tl.window(frame, ctx.coeffs), ctx)

    def clip_blinks(self, num_samples: int) -> np.ndarray:
        """The blink ratio of a whole clip (the reference's rule; zeros with blink off)."""
        t = max(1, num_samples // self.timeline.p.samples_per_frame)
        return reference_blinks(t, self.st.seed) if self.st.blink else np.zeros(t, np.float32)

    def _frame(self, frame: int, semantic: np.ndarray, ctx: AvatarContext) -> np.ndarray:
        if self._last is not None and self._last[:2] == (frame, id(ctx)):
            return self._last[2]  # video faster than 25 fps: same coefficient frame
        out = self.compose(self.render_face(semantic, ctx), ctx)
        self._last = (frame, id(ctx), out)
        return out

    def render_face(self, semantic: np.ndarray, ctx: AvatarContext) -> np.ndarray:
        """The face crop for one C×27 semantic window: size×size×3 uint8."""
        return to_uint8(predictions(self, semantic[None], ctx))[0]

    def compose(self, face: np.ndarray, ctx: AvatarContext) -> np.ndarray:
        """'full'/'extfull': paste the face into the framed photo (feathered, colour-matched
        seam); the other modes: the face at its crop box's aspect, covering the frame."""
        return ctx.show(face)

    def reset(self) -> None:
        self.timeline.reset()
        self._last = None

    def close(self) -> None:
        self._contexts.clear()
        self._last = None
        if self.stages.device.type == "cuda":
            torch.cuda.empty_cache()


def _files_identity(paths: list[Path]) -> str:
    """A short id of checkpoint files by name, size and mtime (hashing 725 MB per start is slow)."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]
