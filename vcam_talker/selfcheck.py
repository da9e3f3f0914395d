"""Start-up self-check: what this machine sustains with the configured engine and size.

``measure`` renders a second of silence through the real engine (the timeline, the networks
and the paste-back: everything a live frame costs) and compares the rate with the configured
fps; ``advice`` is the one-line suggestion when it falls short. The daemon logs the line and
``vcam-talker status`` shows the figure.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from vcam_talker.stream.windows import ArrayAudio, Windower


@dataclass(frozen=True)
class SelfCheck:
    engine: str
    size: str
    device: str
    fps_wanted: int
    fps_sustained: float
    ms_p50: float
    frames: int
    ok: bool
    #: the one-line warning with a suggestion; None when the rate is met
    suggestion: str | None

    def line(self) -> str:
        return self.suggestion or (f"self-check: {self.engine} at {self.size} on {self.device} sustains "
                                   f"{self.fps_sustained:.1f} fps (configured {self.fps_wanted})")

    def as_status(self) -> dict:
        return asdict(self)


def describe(engine) -> tuple[str, str, str]:
    """(size, device, precision) of an engine, for messages: the sadtalker face size, else the
    frame size."""
    st = getattr(engine, "st", None)
    stages = getattr(engine, "stages", None)
    device = stages.device.type if stages is not None else "cpu"
    if st is not None:
        precision = "float16" if st.half else st.precision
        return f"{getattr(engine, 'size', st.size)}²", device, precision
    w, h = engine.frame_size
    return f"{w}x{h}", device, "float32"


def advice(engine_name: str, size: str, fps_sustained: float, fps_wanted: float, device: str,
           precision: str = "float32") -> str | None:
    """The one-line warning when ``fps_sustained`` is below ``fps_wanted``, naming what to
    change first (cheapest loss of quality first); None when the rate is met."""
    if fps_sustained >= fps_wanted:
        return None
    if engine_name == "sadtalker":
        if size.startswith("512"):
            hint = "engine.sadtalker.size: 256 (a quarter of the pixels)"
        elif device == "cuda" and precision in ("float32", "tf32"):
            hint = "engine.sadtalker.precision: float16 (CUDA)"
        elif device == "cuda":
            hint = f"video.fps: {max(1, int(fps_sustained))}, or engine.name: classic"
        else:
            hint = "a CUDA GPU (engine.sadtalker.device: cuda), or engine.name: classic"
    else:
        hint = f"a smaller video.width/height, or video.fps: {max(1, int(fps_sustained))}"
    return (f"self-check: {engine_name} at {size} on {device} sustains {fps_sustained:.1f} fps, below the "
            f"configured {fps_wanted:g}; try {hint}")


def measure(engine, avatar, fps: int, seconds: float = 1.0, min_frames: int = 3) -> SelfCheck:
    """Render silence frame after frame for about ``seconds`` (at least ``min_frames``
    unless those take over 2 × ``seconds``) through ``engine`` and ``avatar``; the first
    frame (stream start) is not counted. Call it before the live threads start: it resets
    the engine's motion state before and after, so the live stream starts clean."""
    spec = engine.window_spec
    rate = spec.sample_rate
    n_max = max(min_frames, int(seconds * fps * 4)) + 1
    audio = ArrayAudio(np.zeros(int((n_max / fps + 2 * (spec.before + spec.after) + 1) * rate), np.float32), rate)
    windows = Windower(audio, spec, fps)
    engine.reset()
    times: list[float] = []
    start = last = 0.0
    try:
        for i in range(n_max):
            t0 = time.perf_counter()
            engine.render(windows.window(i), avatar)
            last = t1 = time.perf_counter()
            if i == 0:
                start = t1
                continue
            times.append(t1 - t0)
            # enough frames, or a frame rate so far below real time that more add nothing
            if t1 - start >= seconds and (len(times) >= min_frames or t1 - start >= 2 * seconds):
                break
    finally:
        engine.reset()
    sustained = len(times) / (last - start) if last > start else 0.0
    size, device, precision = describe(engine)
    hint = advice(engine.name, size, sustained, fps, device, precision)
    return SelfCheck(engine=engine.name, size=size, device=device, fps_wanted=fps, fps_sustained=round(sustained, 2),
                     ms_p50=round(float(np.median(times)) * 1e3, 2) if times else 0.0, frames=len(times),
                     ok=hint is None, suggestion=hint)


def measure_safely(engine, avatar, fps: int, seconds: float = 1.0) -> SelfCheck:
    """:func:`measure`, except that an engine failing to render is a result, not a crash:
    the live path has its own answer to that (repeated frames, then the classic fallback)."""
    try:
        return measure(engine, avatar, fps, seconds)
    except Exception as exc:
        size, device, _ = describe(engine)
        why = " ".join(str(exc).split())[:200]
        return SelfCheck(engine=engine.name, size=size, device=device, fps_wanted=fps, fps_sustained=0.0,
                         ms_p50=0.0, frames=0, ok=False,
                         suggestion=f"self-check: {engine.name} failed to render a frame ({type(exc).__name__}: {why})")
