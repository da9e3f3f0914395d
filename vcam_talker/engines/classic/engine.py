"""ClassicEngine: the embedded default engine."""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from vcam_talker.avatar import PreparedAvatar, prepare_avatar
from vcam_talker.avatar.image import MAX_IMAGE_BYTES
from vcam_talker.avatar.landmarks import LandmarkDetector, shared_detector
from vcam_talker.config import ClassicConfig, Config
from vcam_talker.engines.base import Engine
from vcam_talker.errors import AvatarError
from vcam_talker.engines.classic.motion import Motion, MotionModel
from vcam_talker.engines.classic.renderer import Renderer, build_rig
from vcam_talker.engines.classic import visemes as V
from vcam_talker.frames import AudioWindow, WindowSpec
from vcam_talker.safeio import regular_file

SAMPLE_RATE = 16000
#: audio context before the frame time that the features look at (the viseme net's history)
BEFORE_S = V.HISTORY_S
#: bump when build_rig's arrays change meaning
RIG_VERSION = "rig-2"

log = logging.getLogger(__name__)


class ClassicEngine(Engine):
    name = "classic"

    def __init__(self, config: Config):
        self.config = config
        self._spec = WindowSpec(SAMPLE_RATE, BEFORE_S, config.engine.classic.lookahead_ms / 1000.0)
        self.motion = MotionModel(config.engine.classic, config.video.fps, SAMPLE_RATE,
                                  self._spec.before, self._spec.after)
        self._detector: LandmarkDetector | None = None
        # renderers for the current and the incoming avatar during a swap
        self._renderers: OrderedDict[int, Renderer] = OrderedDict()

    @property
    def window_spec(self) -> WindowSpec:
        return self._spec

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.config.video.width, self.config.video.height

    def prepare(self, image_path: str | Path) -> PreparedAvatar:
        # stat first: prepare reads the whole file, and a FIFO or /dev/zero never ends
        regular_file(Path(image_path), "avatar image", MAX_IMAGE_BYTES, AvatarError)

        def run() -> PreparedAvatar:
            return prepare_avatar(Path(image_path), self.config, self.name,
                                  precompute=lambda av: build_rig(av.image, av.landmarks),
                                  detector=self.detector, cache_tag=RIG_VERSION)

        av = run()
        if av.from_cache:
            why = self._unusable(av)
            if why:  # a tampered or stale entry would fail every frame: rebuild it instead
                log.warning("avatar cache %s is unusable (%s); rebuilding it", av.info.get("cache_file"), why)
                Path(av.info.get("cache_file") or "").unlink(missing_ok=True)
                av = run()
        return av

    def _unusable(self, av: PreparedAvatar) -> str:
        """Why a cached avatar cannot render at the configured size ('' when it can): the
        frame size, the rig's boxes inside the frame, then one real frame, wide open."""
        w, h = self.frame_size
        if av.image.shape != (h, w, 3):
            return f"image is {av.image.shape}, the frame is {(h, w, 3)}"
        try:
            x0, y0, x1, y1 = (int(v) for v in av.data["head_box"])
            mx0, mx1, my0, my1 = (int(v) for v in av.data["mouth_box"])
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and 0 <= mx0 < mx1 <= w and 0 <= my0 < my1 <= h):
                return "the rig's boxes lie outside the frame"
            out = Renderer(av.image, av.data).render(Motion(open=1.0, width=1.0, round=1.0, blink=1.0, tuck=1.0))
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        return "" if out.shape == (h, w, 3) and out.dtype == np.uint8 else f"renders {out.shape} {out.dtype}"

    def detector(self) -> LandmarkDetector:
        if self._detector is None:
            self._detector = shared_detector(self.config.avatar.landmarks)
        return self._detector

    def renderer(self, avatar: PreparedAvatar) -> Renderer:
        key = id(avatar)
        r = self._renderers.get(key)
        if r is None or r.image is not avatar.image:
            r = Renderer(avatar.image, avatar.data)
            self._renderers[key] = r
            while len(self._renderers) > 2:
                self._renderers.popitem(last=False)
        return r

    def update_tuning(self, classic: ClassicConfig) -> None:
        """Live tuning change: the motion model reads its config on every frame."""
        self.config = dataclasses.replace(self.config, engine=dataclasses.replace(self.config.engine, classic=classic))
        self.motion.cfg = classic

    def motion_for(self, window: AudioWindow) -> Motion:
        return self.motion.step(window.samples, window.t)

    def render(self, window: AudioWindow, avatar: PreparedAvatar) -> np.ndarray:
        return self.renderer(avatar).render(self.motion_for(window))

    def reset(self) -> None:
        self.motion.reset()
