"""Frames in batches: the catch-up path of the live worker, and the warm-up.

The coefficient timeline is sequential and cheap, so each window goes through it in order;
then MappingNet, the keypoint transform and the generator run once for the whole batch, the
faces reach the host in one copy, and each is composed (paste-back, on the CPU).
A batch gives the same frames as the windows rendered one by one (float32: within 1e-5
before rounding, tests/sadtalker/test_batch.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vcam_talker.frames import AudioWindow

if TYPE_CHECKING:
    from vcam_talker.avatar import PreparedAvatar

    from .engine import AvatarContext, SadTalkerEngine


def predictions(engine: SadTalkerEngine, semantics: np.ndarray | torch.Tensor, ctx: AvatarContext) -> torch.Tensor:
    """B×C×27 semantic windows (host or device) -> B×3×S×S float predictions in (0, 1), on the device."""
    s = engine.stages
    if isinstance(semantics, np.ndarray):
        semantics = torch.from_numpy(np.ascontiguousarray(semantics))
    with torch.inference_mode():
        kp_driving = s.motion(semantics, ctx.kp_canonical, **engine.head_angles)
        return s.frame(ctx.feature_3d, ctx.compressed, ctx.kp_source, kp_driving)


#: pinned host buffers by shape (allocating pinned memory costs more than the copy); one
#: torch thread per engine uses them, and each call copies its frames out before returning
_PINNED: dict[tuple[int, ...], torch.Tensor] = {}
_PINNED_LOCK = threading.Lock()


def to_uint8(pred: torch.Tensor) -> np.ndarray:
    """B×3×S×S predictions -> B×S×S×3 uint8 on the host: rounded on the device, then the
    frame's one device-to-host copy (on CUDA into a reused pinned buffer, so it is a plain
    DMA; the frames are then copied out of it, since the buffer is reused by the next call)."""
    with torch.inference_mode():
        img = (pred.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        if img.device.type != "cuda":
            return img.numpy()
        with _PINNED_LOCK:
            host = _PINNED.get(tuple(img.shape))
            if host is None:
                host = _PINNED[tuple(img.shape)] = torch.empty(img.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(img, non_blocking=True)
            torch.cuda.current_stream(img.device).synchronize()
            return host.numpy().copy()


def batch_sizes(engine: SadTalkerEngine) -> tuple[int, ...]:
    """The generator batch sizes live use runs: 1 and the catch-up size (a catch-up batch of
    2..N-1 is padded to N), warmed by :func:`warm_up`."""
    n = engine.st.catch_up_batch
    return (1, n) if n > 1 else (1,)


def render_batch(engine: SadTalkerEngine, windows: list[AudioWindow], avatar: PreparedAvatar) -> list[np.ndarray]:
    """One frame per window, in order; see the module docstring. Windows showing the same
    coefficient frame as the one before (video above 25 fps) share its frame, as in ``render``."""
    if not windows:
        return []
    ctx = engine.context(avatar)
    keys, todo, semantics = [], [], []
    last = engine._last
    for w in windows:
        frame, semantic = engine.device_window(w, ctx.coeffs)
        key = (frame, id(ctx))
        if (keys and keys[-1] == key) or (not keys and last is not None and last[:2] == key):
            keys.append(key)
            continue
        keys.append(key)
        todo.append(len(keys) - 1)
        semantics.append(semantic)
    out: list[np.ndarray | None] = [None] * len(windows)
    if semantics:
        faces = []
        fixed = max(batch_sizes(engine))
        for lo in range(0, len(semantics), fixed):
            sem = torch.stack(semantics[lo : lo + fixed])
            n = len(sem)
            if 1 < n < fixed:
                # pad to the warmed batch size rather than compile a graph or autotune cuDNN
                # for a new shape in the middle of a live stream
                sem = torch.cat([sem, sem[-1:].expand(fixed - n, -1, -1)])
            faces.extend(to_uint8(predictions(engine, sem, ctx))[:n])
        for j, face in zip(todo, faces):
            out[j] = engine.compose(face, ctx)
    for j in range(len(out)):
        if out[j] is None:
            out[j] = out[j - 1] if j else last[2]
    engine._last = (*keys[-1], out[-1])
    return out  # type: ignore[return-value]


def warm_up(engine: SadTalkerEngine, avatar: PreparedAvatar, frames: int, batch: int = 1,
            run: Callable[..., Any] = lambda fn, *a: fn(*a)) -> list[float]:
    """Render ``frames`` throw-away faces of the avatar's own (still) window, plus the audio
    nets on silence at every size they pad to, touching no streaming state: the first live
    frame then pays no lazy initialisation, cuDNN autotuning or compilation. Returns each
    warm-up frame's seconds. batch > 1 also compiles/tunes that batch size (the catch-up
    path's). run: how each step runs (the engine's torch thread: one job per step, so live
    frames of another avatar go on between them)."""
    mp = engine.stages.audio_hp.mel
    run(engine.stages.audio.warm_up, (mp.num_mels, mp.mel_window))
    sizes = [1] * frames + ([batch] if batch > 1 and frames else [])
    times = []
    for b in sizes:
        t0 = time.perf_counter()
        run(_warm_frame, engine, avatar, b)
        times.append(time.perf_counter() - t0)
    return times


def _warm_frame(engine: SadTalkerEngine, avatar: PreparedAvatar, b: int) -> None:
    ctx = engine.context(avatar)
    window = ctx.coeffs.source_window()
    to_uint8(predictions(engine, np.repeat(window[None], b, 0), ctx))
