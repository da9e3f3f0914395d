"""Offline render: speech file + avatar → mp4, with the daemon's engine and windowing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from vcam_talker.audio.files import load_speech
from vcam_talker.config import Config
from vcam_talker.engines import create_engine
from vcam_talker.progress import Progress
from vcam_talker.sinks.ffmpeg import FfmpegFileWriter
from vcam_talker.stream.windows import ArrayAudio, Windower, frame_count

log = logging.getLogger(__name__)


@dataclass
class RenderResult:
    out: Path
    frames: int
    fps: int
    audio_seconds: float
    prepare_s: float
    render_s: float
    wall_s: float

    @property
    def realtime_factor(self) -> float:
        """How many times faster than real time the whole render ran."""
        return self.audio_seconds / self.wall_s if self.wall_s > 0 else float("inf")


def render_file(cfg: Config, audio: Path, out: Path, avatar: Path | None = None,
                progress: bool = True, streaming: bool = False) -> RenderResult:
    """streaming: render window by window as the live path does (the engine's bounded
    horizon), instead of the engine's whole-clip form (``Engine.render_clip``)."""
    t0 = time.perf_counter()
    engine = create_engine(cfg)
    spec = engine.window_spec
    samples, _ = load_speech(audio, spec.sample_rate)
    av = engine.prepare(avatar or cfg.avatar_path())
    t_prep = time.perf_counter() - t0
    n = frame_count(len(samples), spec.sample_rate, cfg.video.fps)
    if streaming:
        windows = Windower(ArrayAudio(samples, spec.sample_rate), spec, cfg.video.fps)
        frames = (engine.render(windows.window(i), av) for i in range(n))
    else:
        frames = engine.render_clip(samples, av, cfg.video.fps)
    t1 = time.perf_counter()
    try:
        with FfmpegFileWriter(out, engine.frame_size, cfg.video.fps, audio=audio) as sink, \
                Progress(n, "render", unit="frame", enabled=progress) as bar:
            for image in frames:
                sink.write(image)
                bar.update()
    finally:
        engine.close()
    t_end = time.perf_counter()
    return RenderResult(out=Path(out), frames=n, fps=cfg.video.fps, audio_seconds=len(samples) / spec.sample_rate,
                        prepare_s=t_prep, render_s=t_end - t1, wall_s=t_end - t0)
