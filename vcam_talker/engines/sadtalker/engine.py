"""SadTalkerEngine: our SadTalker networks behind the :class:`Engine` interface.

One resident object per stage, built once from the checkpoints (:mod:`.stages`):

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
Every torch call of the public methods runs on the engine's own thread (:mod:`.owner`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vcam_talker.avatar import PreparedAvatar, prepare_avatar
from vcam_talker.config import Config, SadTalkerConfig
from vcam_talker.engines.base import Engine
from vcam_talker.errors import EngineError
from vcam_talker.frames import AudioWindow, WindowSpec
from vcam_talker.stream.windows import frame_count

from .accel import compile_cache, precision_name, resolve_precision
from .audio_hparams import AudioHParams
from .batch import predictions, render_batch, to_uint8, warm_up
from .composite import Cover, Paste, display
from .owner import TorchThread
from .files import check_weights, combined_file, folder_hparams, is_full, mapping_file
from .source import precompute
from .presets import TimelineParams, coeff_frame
from .randomness import BlinkSchedule, Latents, reference_blinks
# the stages and their loading live in .stages; re-exported (``__all__``) for old import paths
from .stages import (
    COMBINED_PREFIXES, AudioStage, FrameStage, MotionStage, SourceStage, Stages, WeightLayout, _load, load_stages,
)
from .timeline import CoefficientTimeline, SourceCoeffs, clip_timeline

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: bump when the prepared arrays change meaning (st-2: the source is cut from the photo)
PREP_VERSION = "st-2"


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
        #: the one thread that runs this engine's torch work (compiled graphs are per thread)
        self.torch = TorchThread(stages.device)
        self._warmed = False

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
            precompute=lambda av: precompute(self.stages, av, self.size, mode, self.full, self.detector,
                                             run=lambda job: self.torch.call(job, side=True)),
            detector=self.detector,
            cache_tag=tag,
        )
        if self.st.warmup_frames:
            # compilation and cuDNN autotuning happen per shape: warm every frame count up on
            # CUDA or when compiled; eager on a CPU only initialises oneDNN: one frame does.
            # Once warmed, a swap's avatar needs one frame (its context on the device).
            slow_start = self.stages.device.type == "cuda" or self.stages.frame.compiled
            n = self.st.warmup_frames if slow_start and not self._warmed else 1
            batch = self.st.catch_up_batch if slow_start and not self._warmed else 1
            self.warmup_s = warm_up(self, avatar, n, batch, run=self.torch.call)
            self._warmed = True
        return avatar

    def context(self, avatar: PreparedAvatar) -> AvatarContext:
        """The avatar's arrays on the device (built once per avatar; two kept for swaps)."""
        key = id(avatar)
        ctx = self._contexts.get(key)
        if ctx is not None and ctx.image is avatar.image:
            return ctx
        d, s = avatar.data, self.stages
        dev = s.device
        ctx = AvatarContext(
            image=avatar.image,
            coeffs=SourceCoeffs.from_row(d["coeff"], self.full),
            kp_canonical=torch.from_numpy(d["kp_canonical"])[None].to(dev),
            kp_source=torch.from_numpy(d["kp_source"])[None].to(dev),
            # float32 whatever the generator's dtype: the warps read them in float32 (generator.py)
            feature_3d=torch.from_numpy(d["feature_3d"])[None].to(dev, torch.float32),
            compressed=torch.from_numpy(d["compressed"])[None].to(dev, torch.float32),
            show=display(self.full, avatar.image, d, self.size),
        )
        self._contexts[key] = ctx
        while len(self._contexts) > 2:
            self._contexts.popitem(last=False)
        return ctx

    def coefficient_window(self, window: AudioWindow, source: SourceCoeffs) -> tuple[int, np.ndarray]:
        """Feed one audio window to the streaming timeline: (clip frame shown, its C×27 window)."""
        frame, semantic = self.device_window(window, source)
        return frame, semantic.cpu().numpy()

    def device_window(self, window: AudioWindow, source: SourceCoeffs) -> tuple[int, torch.Tensor]:
        """:meth:`coefficient_window` with the window left on the device (the live path)."""
        centre = int(round(window.t * window.sample_rate))
        self.timeline.set_source(source)
        self.timeline.ingest(window.samples, centre - self._spec.before, window.end)
        frame = coeff_frame(window.t)
        return self.timeline.clip_frame(frame), self.timeline.window_tensor(frame, source)

    def render(self, window: AudioWindow, avatar: PreparedAvatar) -> np.ndarray:
        return self.torch.call(self._render, window, avatar)

    def _render(self, window: AudioWindow, avatar: PreparedAvatar) -> np.ndarray:
        ctx = self.context(avatar)
        frame, semantic = self.device_window(window, ctx.coeffs)
        return self._frame(frame, semantic, ctx)

    #: the live worker may hand a backlog of windows to ``render_batch`` (:mod:`.batch`)
    batch_catch_up = True

    def render_batch(self, windows: list[AudioWindow], avatar: PreparedAvatar) -> list[np.ndarray]:
        return self.torch.call(render_batch, self, windows, avatar)

    def render_clip(self, samples: np.ndarray, avatar: PreparedAvatar, fps: int) -> Iterator[np.ndarray]:
        """The offline form: the whole clip's coefficients as the reference computes them
        (remainder pose chunk, end clamping, the short-clip blink rule), then one frame per
        video frame; video frame i shows coefficient frame round(25 i / fps), the last one past
        the clip's end. samples: 16 kHz float32 mono."""
        ctx = self.torch.call(self.context, avatar)
        tl = self.torch.call(lambda: clip_timeline(self.stages.audio, samples, ctx.coeffs, self.timeline.p,
                                                   ratio=self.clip_blinks(len(samples)), latents=Latents(self.st.seed + 1)))

        def one(frame: int) -> np.ndarray:
            return self._frame(frame, tl.window_tensor(frame, ctx.coeffs), ctx)

        for i in range(frame_count(len(samples), SAMPLE_RATE, fps)):
            yield self.torch.call(one, tl.clip_frame(coeff_frame(i / fps)))

    def clip_blinks(self, num_samples: int) -> np.ndarray:
        """The blink ratio of a whole clip (the reference's rule; zeros with blink off)."""
        t = max(1, num_samples // self.timeline.p.samples_per_frame)
        return reference_blinks(t, self.st.seed) if self.st.blink else np.zeros(t, np.float32)

    def _frame(self, frame: int, semantic: torch.Tensor, ctx: AvatarContext) -> np.ndarray:
        if self._last is not None and self._last[:2] == (frame, id(ctx)):
            return self._last[2]  # video faster than 25 fps: same coefficient frame
        out = self.compose(self.render_face(semantic, ctx), ctx)
        self._last = (frame, id(ctx), out)
        return out

    def render_face(self, semantic: np.ndarray | torch.Tensor, ctx: AvatarContext) -> np.ndarray:
        """The face crop for one C×27 semantic window: size×size×3 uint8."""
        return to_uint8(predictions(self, semantic[None], ctx))[0]

    def compose(self, face: np.ndarray, ctx: AvatarContext) -> np.ndarray:
        """'full'/'extfull': paste the face into the framed photo (feathered, colour-matched
        seam); the other modes: the face at its crop box's aspect, covering the frame."""
        return ctx.show(face)

    def reset(self) -> None:
        self.torch.call(self._reset)

    def _reset(self) -> None:
        self.timeline.reset()
        self._last = None

    def close(self) -> None:
        """Release the avatars' device arrays and the compiled graphs, then end the torch thread."""
        try:
            self.torch.call(self._release)
        except EngineError:  # closed already
            return
        self.torch.close()

    def _release(self) -> None:
        self._contexts.clear()
        self._last = None
        self.stages.frame.close()
        if self.stages.device.type == "cuda":
            torch.cuda.empty_cache()


def _files_identity(paths: list[Path]) -> str:
    """A short id of checkpoint files by name, size and mtime (hashing 725 MB per start is slow)."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


__all__ = [
    "PREP_VERSION", "SAMPLE_RATE", "AvatarContext", "SadTalkerEngine", "resolve_device", "timeline_params",
    # re-exported from .stages
    "COMBINED_PREFIXES", "AudioStage", "FrameStage", "MotionStage", "SourceStage", "Stages", "WeightLayout",
    "_load", "load_stages",
]
