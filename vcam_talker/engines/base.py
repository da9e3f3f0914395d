"""The interface every engine implements.

An engine is resident: it is built once, ``prepare`` turns an avatar image into an
engine-specific :class:`PreparedAvatar` (cached on disk, heavy, may run in a
background thread), and ``render`` turns one :class:`AudioWindow` into one frame for
a given prepared avatar. Passing the avatar to ``render`` is what makes an avatar
swap atomic: the caller switches the reference between two frames.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np

from vcam_talker.avatar.prepared import PreparedAvatar
from vcam_talker.frames import AudioWindow, WindowSpec
from vcam_talker.stream.windows import ArrayAudio, Windower, frame_count


class Engine(ABC):
    #: the name used in config.yaml and in cache keys
    name: str = ""

    @property
    @abstractmethod
    def window_spec(self) -> WindowSpec:
        """The audio each ``render`` call needs around its frame time."""

    @property
    @abstractmethod
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frames ``render`` returns."""

    @abstractmethod
    def prepare(self, image_path: str) -> PreparedAvatar:
        """Load, detect, crop and precompute an avatar (through the cache).

        Raises AvatarError with a one-line reason on bad input.
        """

    @abstractmethod
    def render(self, window: AudioWindow, avatar: PreparedAvatar) -> np.ndarray:
        """One frame for ``window``: HxWx3 uint8 RGB at ``frame_size``.

        Calls come in frame order; the engine may keep motion state between them.
        """

    #: True when ``render_batch`` is faster per frame than ``render`` (a real batch), so the
    #: live worker may catch up a backlog with it instead of skipping windows
    batch_catch_up: bool = False

    def render_batch(self, windows: list[AudioWindow], avatar: PreparedAvatar) -> list[np.ndarray]:
        """One frame per window, in order: the same frames as ``render`` called on each.
        By default exactly that loop; an engine that can batch overrides it."""
        return [self.render(w, avatar) for w in windows]

    def render_clip(self, samples: np.ndarray, avatar: PreparedAvatar, fps: int) -> Iterator[np.ndarray]:
        """Every frame of a whole recording (float32 mono at ``window_spec.sample_rate``):
        round(duration × fps) frames. An engine whose offline form differs from its streaming
        one (it can see the whole clip) overrides this; by default it is the streaming form."""
        rate = self.window_spec.sample_rate
        windows = Windower(ArrayAudio(samples, rate), self.window_spec, fps)
        for i in range(frame_count(len(samples), rate, fps)):
            yield self.render(windows.window(i), avatar)

    def reset(self) -> None:
        """Forget motion state (a new stream starts)."""

    def close(self) -> None:
        """Release resources (threads, GPU memory)."""
