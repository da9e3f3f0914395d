"""The resident SadTalker stages and their checkpoint loading: one object per stage, built
once by :func:`load_stages` and strict about every key (:mod:`.checkpoint`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vcam_talker.errors import CheckpointError, EngineError

from .accel import compile_fn, keep_float32_islands, use_channels_last
from .audio2exp import Audio2Exp
from .audio2pose import Audio2Pose
from .audio_hparams import AudioHParams
from .checkpoint import load_strict, read_state_dict, split_prefix, training_only_prefixes
from .face_recon import FaceReconNet, recon_input
from .generator import OcclusionAwareSPADEGenerator
from .hparams import RenderHParams
from .keypoints import KPDetector, transform_keypoints
from .layers import fold_spectral_norms
from .mapping import MappingNet

#: prefixes of the combined file; anything else in it is an error
COMBINED_PREFIXES = ("kp_extractor.", "generator.", "audio2exp.", "audio2pose.", "face_3drecon.")


#: the batch sizes the audio nets run at on CUDA (a batch pads up to one): cuDNN autotunes per
#: shape, and live use meets 1..27 rows; :meth:`AudioStage.warm_up` warms each
AUDIO_SIZES = (1, 4, 32)


def _padded(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """fn over x's rows along ``dim`` in chunks padded to :data:`AUDIO_SIZES` (rows are
    independent in these nets, so padding changes none of them)."""
    n, top = x.shape[dim], AUDIO_SIZES[-1]
    if n == 0 or (n in AUDIO_SIZES):
        return fn(x)
    outs = []
    for lo in range(0, n, top):
        part = x.narrow(dim, lo, min(top, n - lo))
        m = part.shape[dim]
        size = next(s for s in AUDIO_SIZES if s >= m)
        if size > m:
            last = part.narrow(dim, m - 1, 1)
            part = torch.cat([part, last.expand(*[size - m if d == dim else -1 for d in range(part.dim())])], dim)
        outs.append(fn(part).narrow(dim, 0, m))
    return torch.cat(outs, dim)


class AudioStage:
    """audio2exp + audio2pose, float32 on ``device``. Mel windows are N×80×16 float32 (host
    or device). Embeddings and expressions stay on the device; only a pose decode's rows come
    back to the host (the numpy smoothing reads them), once per decode."""

    def __init__(self, a2e: Audio2Exp, a2p: Audio2Pose, device: torch.device) -> None:
        self.a2e, self.a2p, self.device = a2e, a2p, device
        self.seq_len = a2p.params.seq_len
        self._pad = device.type == "cuda"
        self._styles: dict[int, torch.Tensor] = {}

    def _rows(self, fn, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return _padded(fn, x, dim) if self._pad else fn(x)

    def exp_embed(self, mels: torch.Tensor) -> torch.Tensor:
        """N×80×16 -> N×c4 audio embeddings (device)."""
        return self._rows(lambda m: self.a2e.embed(m[:, None]), mels.to(self.device))

    def exp_head(self, emb: torch.Tensor, ref_exp: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """emb N×c4, ref_exp N×64, ratio N×1 -> N×64 expression coefficients (device)."""
        d = self.device
        packed = torch.cat([emb.to(d), ref_exp.to(d), ratio.to(d)], 1)
        c4, c64 = emb.shape[1], ref_exp.shape[1]
        return self._rows(lambda p: self.a2e.head(p[:, :c4], p[:, c4:c4 + c64], p[:, c4 + c64:]), packed)

    def pose_embed(self, mels: torch.Tensor) -> torch.Tensor:
        """N×80×16 -> N×c4 pose-encoder embeddings (device)."""
        return self._rows(lambda m: self.a2p.audio_encoder(m[None, :, None])[0], mels.to(self.device))

    def pose_decode(self, emb: torch.Tensor, ref_pose: torch.Tensor, style: int, z: torch.Tensor) -> torch.Tensor:
        """emb seq_len×c4, ref_pose 6, z 64 -> seq_len×6 head motion, on the host: the one
        device-to-host copy of a decode."""
        d = self.device
        style_t = self._styles.get(int(style))
        if style_t is None:
            style_t = self._styles[int(style)] = torch.tensor([int(style)], device=d)
        return self.a2p.netG.decoder(z.to(d)[None], style_t, ref_pose.to(d)[None], emb.to(d)[None])[0].cpu()

    def warm_up(self, mel_shape: tuple[int, int]) -> None:
        """Every padded size of every net once, on silence (mel_shape: mels × window)."""
        d, p = self.device, self.a2p.params
        with torch.inference_mode():
            for n in AUDIO_SIZES if self._pad else (1,):
                mels = torch.zeros(n, *mel_shape, device=d)
                emb = self.exp_embed(mels)
                self.exp_head(emb, torch.zeros(n, 64, device=d), torch.zeros(n, 1, device=d))
                pose = self.pose_embed(mels)
            self.pose_decode(pose[:1].expand(self.seq_len, -1), torch.zeros(p.pose_dim), 0, torch.zeros(p.latent_size))


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


def _frame_fn(generator: OcclusionAwareSPADEGenerator) -> Callable[..., torch.Tensor]:
    def frame(feature_3d, compressed, kp_source, kp_driving):
        # expand inside: the compiled graph sees the cached 1-batch source tensors themselves
        b = kp_driving.shape[0]
        out = generator.forward_from_features(feature_3d.expand(b, -1, -1, -1, -1), kp_source.expand(b, -1, -1),
                                              kp_driving, compressed=compressed.expand(b, -1, -1, -1, -1))
        return out["prediction"]  # only the image leaves the graph
    return frame


class FrameStage:
    """The generator's per-frame part on a cached source.

    feature_3d 1×Cf×D×h×w, compressed 1×C×D×h×w (float32: the warps read them in float32),
    kp_source 1×K×3, kp_driving B×K×3 (float32) -> prediction B×3×4h×4w in (0, 1), float32.
    Compiled: one graph per batch size, owned by this object (:func:`.accel.own_code`); under
    CUDA graphs the output is overwritten by the next call, so read it before calling again
    (the engine does, on its one torch thread).
    """

    def __init__(self, generator: OcclusionAwareSPADEGenerator, dtype: torch.dtype, compile: bool | str = False) -> None:
        self.generator, self.dtype = generator, dtype
        self.compiled = bool(compile)
        self._fn: Callable[..., torch.Tensor] | None = _frame_fn(generator)
        if compile:
            self._fn = compile_fn(self._fn, compile if isinstance(compile, str) else "default")

    def __call__(self, feature_3d, compressed, kp_source, kp_driving) -> torch.Tensor:
        if self._fn is None:
            raise EngineError("sadtalker: the frame stage was closed")
        return self._fn(feature_3d, compressed, kp_source, kp_driving)

    def close(self) -> None:
        """Drop the compiled graphs (their code object and cache go with the function)."""
        self._fn = None


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


def prepare_generator(gen: OcclusionAwareSPADEGenerator, device: torch.device, dtype: torch.dtype) -> None:
    """Spectral norms folded in float32, then the cast to ``dtype`` with the float32 islands."""
    fold_spectral_norms(gen)
    gen.to(device=device, dtype=dtype)
    if dtype != torch.float32:
        keep_float32_islands(gen)


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
    prepare_generator(gen, device, dtype)
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
