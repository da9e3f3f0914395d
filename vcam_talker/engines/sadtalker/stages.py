"""The resident SadTalker stages and their checkpoint loading: one object per stage, built
once by :func:`load_stages` and strict about every key (:mod:`.checkpoint`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vcam_talker.errors import CheckpointError, EngineError

from .accel import compile_fn, use_channels_last
from .audio2exp import Audio2Exp
from .audio2pose import Audio2Pose
from .audio_hparams import AudioHParams
from .checkpoint import load_strict, read_state_dict, split_prefix, training_only_prefixes
from .face_recon import FaceReconNet, recon_input
from .generator import OcclusionAwareSPADEGenerator
from .hparams import RenderHParams
from .keypoints import KPDetector, transform_keypoints
from .mapping import MappingNet

#: prefixes of the combined file; anything else in it is an error
COMBINED_PREFIXES = ("kp_extractor.", "generator.", "audio2exp.", "audio2pose.", "face_3drecon.")


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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


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
