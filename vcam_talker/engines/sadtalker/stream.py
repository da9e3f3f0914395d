"""SadTalker's coefficient timeline, offline (whole clip) and streaming (one frame at a time).

Both paths run the same stages (:class:`AudioNets` is what they need from the engine):
mel windows → audio2exp → audio2pose → Savitzky–Golay pose smoothing → 27-frame semantic
windows. Coefficient frames are at 25 fps (the reference's rate) whatever the video rate;
display frame at time t uses coefficient frame round(25·t).

Streaming (:class:`CoefficientStream`) bounds the reference's offline look-ahead:

- mel: frame j's window reads audio up to 132.5 ms after its time (exact, no approximation);
- semantic windows: rows beyond ``j + lookahead`` are clamped to the last known row, which is
  what the reference does at the end of a clip;
- audio2pose: every ``pose_chunk`` frames, the CVAE decodes the latest 32 frames of audio and
  keeps its last ``pose_chunk`` rows (the reference's remainder rule). The latent changes
  every 32 frames as in the reference; below 32 a decaying offset joins consecutive decodes
  so the head does not jump;
- smoothing: the reference's savgol. The shown pose trails the audio by
  ``pose_chunk + 5 - lookahead`` frames (if positive) so that it is always decoded and fully
  smoothed; window rows further ahead hold the newest fully smoothed pose.

With ``lookahead >= pose_chunk + 5`` the pose does not trail. With lookahead 37 and
pose_chunk 32, a frame whose window and smoothing only read audio already seen equals the
reference's offline output (tests pin this).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .audio2pose import SEMANTIC_RADIUS, plan_pose_chunks, semantic_windows, smooth_pose, window_rows
from .audio_hparams import MelParams
from .mel import MelFrontend, wav_to_windows, window_start

#: the reference's coefficient rate
COEFF_FPS = 25
#: blink shape and the range of frames between blinks (the reference's random generator)
BLINK_SHAPE = (0.5, 0.9, 1.0, 0.9, 0.5)
BLINK_GAP = (10, 70)
#: frames of coefficient history kept behind the newest one
_HISTORY = 96


class AudioNets(Protocol):
    """What the timeline needs from the audio stage (see ``engine.AudioStage``)."""

    seq_len: int

    def exp_embed(self, mels: torch.Tensor) -> torch.Tensor: ...  # N×80×16 -> N×c4

    def exp_head(self, emb: torch.Tensor, ref_exp: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor: ...

    def pose_embed(self, mels: torch.Tensor) -> torch.Tensor: ...  # N×80×16 -> N×c4

    def pose_decode(self, emb: torch.Tensor, ref_pose: torch.Tensor, style: int, z: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class SourceCoeffs:
    """The per-avatar inputs of the timeline. ref_exp 64, ref_pose 6 (angle ‖ trans),
    crop: (s, tx, ty) appended to every row in 'full' mode, else None."""

    ref_exp: np.ndarray
    ref_pose: np.ndarray
    crop: np.ndarray | None = None

    @classmethod
    def from_row(cls, coeff73: np.ndarray, full: bool) -> SourceCoeffs:
        c = np.asarray(coeff73, np.float32).reshape(-1)
        return cls(c[:64].copy(), c[64:70].copy(), c[70:73].copy() if full else None)

    def source_window(self, radius: int = SEMANTIC_RADIUS) -> np.ndarray:
        """The source's semantic window: its coefficient row repeated. C×(2r+1), C = 70 or 73."""
        row = np.concatenate([self.ref_exp, self.ref_pose] + ([self.crop] if self.crop is not None else []))
        return np.repeat(row[:, None], 2 * radius + 1, axis=1).astype(np.float32)


class BlinkSchedule:
    """Eye-blink ratio per coefficient frame: the 5-frame blink shape at random gaps of
    10..69 frames, the reference's generator for clips longer than 140 frames."""

    def __init__(self, seed: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self._rng = np.random.default_rng(seed)
        self._next = 0  # first frame the schedule has not decided yet
        self._ratio: dict[int, float] = {}

    def ratio(self, frame: int) -> float:
        if not self.enabled:
            return 0.0
        while self._next <= frame:
            start = self._next + int(self._rng.integers(*BLINK_GAP))
            for i, v in enumerate(BLINK_SHAPE):
                self._ratio[start + i] = v
            self._next = start + len(BLINK_SHAPE)
        for old in [f for f in self._ratio if f < frame - _HISTORY]:
            del self._ratio[old]
        return self._ratio.get(frame, 0.0)


class Latents:
    """One CVAE latent (64) per 32-frame block, drawn in block order from a seeded generator."""

    def __init__(self, seed: int, size: int = 64) -> None:
        self._gen = torch.Generator().manual_seed(seed)
        self._size = size
        self._drawn: list[torch.Tensor] = []

    def __call__(self, block: int) -> torch.Tensor:
        while len(self._drawn) <= block:
            self._drawn.append(torch.randn(self._size, generator=self._gen))
        return self._drawn[block]


# --------------------------------------------------------------------------------------------
# Offline: the reference's whole-clip chain
# --------------------------------------------------------------------------------------------


def clip_coefficients(
    nets: AudioNets,
    wav: np.ndarray,
    source: SourceCoeffs,
    *,
    style: int,
    ratio: np.ndarray | None = None,
    latents: Callable[[int], torch.Tensor] | None = None,
    still: bool = False,
    expression_scale: float = 1.0,
    mel_params: MelParams = MelParams(),
) -> dict[str, np.ndarray]:
    """The reference's audio-to-coefficients chain for a whole float wave at 16 kHz.

    ratio: T (or T×1) blink ratios, default zeros; latents: block -> 64 latent, one per pose
    chunk in chunk order. Returns float32 arrays: ``indiv_mels`` T×80×16, ``exp`` T×64,
    ``pose_raw`` / ``pose_smoothed`` T×6, ``coeffs`` T×C, ``windows`` T×C×27 (C = 70, or 73
    with the source crop appended in 'full' mode).
    """
    _, windows = wav_to_windows(wav, mel_params)
    t = len(windows)
    mels = torch.from_numpy(windows)
    ratio_t = torch.zeros(t, 1) if ratio is None else torch.as_tensor(np.asarray(ratio, np.float32)).reshape(t, 1)
    with torch.inference_mode():
        emb = nets.exp_embed(mels)
        exp = nets.exp_head(emb, torch.from_numpy(source.ref_exp)[None].expand(t, -1), ratio_t).numpy()
        motion = np.zeros((t, 6), np.float32)
        if not still:
            latents = latents or Latents(0)
            ref_pose = torch.from_numpy(source.ref_pose)
            for k, chunk in enumerate(plan_pose_chunks(t, nets.seq_len)):
                e = nets.pose_embed(mels[chunk.mel_start : chunk.mel_stop])
                if chunk.pad:
                    e = torch.cat([e[:1].expand(chunk.pad, -1), e])
                out = nets.pose_decode(e, ref_pose, style, latents(k)).numpy()
                motion[chunk.out_start : chunk.out_start + chunk.keep] = out[len(out) - chunk.keep :]
    pose_raw = source.ref_pose[None] + motion
    pose = smooth_pose(pose_raw) if not still else np.repeat(source.ref_pose[None], t, 0)
    coeffs = np.concatenate([exp * np.float32(expression_scale), pose], axis=1).astype(np.float32)
    if source.crop is not None:
        coeffs = np.concatenate([coeffs, np.repeat(source.crop[None], t, 0)], axis=1)
    return {
        "indiv_mels": windows,
        "exp": exp.astype(np.float32),
        "pose_raw": pose_raw.astype(np.float32),
        "pose_smoothed": pose,
        "coeffs": coeffs,
        "windows": semantic_windows(coeffs),
    }


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamParams:
    """lookahead: coefficient frames after the displayed one its window may see (0..40);
    pose_chunk: frames between audio2pose decodes (1..seq_len); style: CVAE class."""

    lookahead: int = 5
    pose_chunk: int = 8
    style: int = 0
    still: bool = False
    expression_scale: float = 1.0
    fps: int = COEFF_FPS
    mel: MelParams = MelParams()

    @property
    def pose_delay(self) -> int:
        """Frames the head pose trails the audio so that each shown pose is already decoded
        and fully smoothed (savgol needs 6 frames after it): pose_chunk + 5 - lookahead."""
        return max(0, self.pose_chunk + 5 - self.lookahead)

    @property
    def samples_per_frame(self) -> int:
        return int(self.mel.samples_per_frame)

    def mel_margin(self) -> tuple[int, int]:
        """(before, after) samples around a coefficient frame's time its mel window reads,
        with 200 samples' slack for the truncation of the window start."""
        hop, half = self.mel.hop_size, self.mel.n_fft // 2
        spf = self.samples_per_frame
        before = 2 * spf + hop + half + 1  # start int(3.2(j-2)) may truncate one hop down
        after = -2 * spf + (self.mel.mel_window - 1) * hop + half  # 2120 at the official settings
        return before, after

    def window_samples(self, video_fps: int) -> tuple[int, int]:
        """(before, after) samples of audio a display frame's window must carry."""
        before, after = self.mel_margin()
        after += self.lookahead * self.samples_per_frame
        if video_fps != self.fps:  # round(25 t) may lie half a coefficient frame after t
            after += self.samples_per_frame // 2
        # consecutive windows must touch, so no audio between frames is lost
        period = math.ceil(self.mel.sample_rate / video_fps)
        before = max(before, period - after + 1)
        return before, after


class CoefficientStream:
    """Audio windows in, 27-frame semantic windows out, one display frame at a time.

    Keeps every state between calls: the audio tail, mel rows, per-frame audio embeddings,
    blink ratios and head motion. ``ingest(samples, start, frame)`` adds audio; ``window(frame,
    source)`` gives frame's C×27 window. Embeddings and motion do not depend on the avatar's
    expression, so an avatar swap only changes the cheap heads (``exp_head``, and the pose
    reference for later decodes).
    """

    def __init__(
        self,
        nets: AudioNets,
        params: StreamParams,
        *,
        blink: BlinkSchedule | Callable[[int], float] | None = None,
        latents: Callable[[int], torch.Tensor] | None = None,
    ) -> None:
        if not 1 <= params.pose_chunk <= nets.seq_len:
            raise ValueError(f"pose_chunk must be 1..{nets.seq_len}, got {params.pose_chunk}")
        self.nets = nets
        self.p = params
        self._blink = blink if blink is not None else BlinkSchedule(0, enabled=False)
        self.latents = latents or Latents(0)
        self._front = MelFrontend(params.mel)
        self.decodes = 0
        self.resyncs = 0
        self._z_next = 0  # first latent block no timeline has used
        self._ref_pose = np.zeros(6, np.float32)
        self.reset()

    # -- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the timeline (a new stream). Latent and blink generators keep running."""
        self._audio: np.ndarray | None = None
        self._a0 = 0  # stream sample of _audio[0]
        self._last_start: int | None = None
        self._mel = np.zeros((0, self.p.mel.num_mels))
        self._m0 = 0  # mel index of _mel[0]
        self._mel_lo = 0  # lowest mel index of this timeline (clamp)
        self._j0 = 0  # first coefficient frame of this timeline
        self._base = 0  # frame of the first row of the per-frame lists
        self._exp_emb: list[torch.Tensor] = []
        self._pose_emb: list[torch.Tensor] = []
        self._ratio: list[float] = []
        self._motion: list[np.ndarray] = []  # decoded rows, from _j0
        self._decoded = 0  # decodes done in this timeline
        self._z_block = self._z_next  # latent block of this timeline's first decode

    @property
    def frames_ready(self) -> int:
        """Coefficient frames with embeddings: frames below this index."""
        return self._base + len(self._exp_emb)

    @property
    def pose_ready(self) -> int:
        """Newest frame with decoded head motion."""
        return self._base + len(self._motion) - 1

    def _start_timeline(self, start: int, frame: int, motion: np.ndarray | None) -> None:
        self.reset()
        self._j0 = self._base = frame
        hop, half = self.p.mel.hop_size, self.p.mel.n_fft // 2
        self._mel_lo = max(0, -(-(start + half + 1) // hop))
        self._m0 = self._mel_lo
        self._a0 = start
        self._audio = np.zeros(0, np.float32)
        self._motion = [np.zeros(6, np.float32) if motion is None else motion]

    # -- audio in ----------------------------------------------------------------------------

    def ingest(self, samples: np.ndarray, start: int, frame: int) -> None:
        """Add a window of audio: ``samples`` cover stream samples [start, start+len).

        frame: the coefficient frame the caller is about to display. Windows overlapping or
        touching the audio seen so far extend it; a gap (frames skipped by a slow consumer)
        starts a new timeline at ``frame``, keeping the head's pose; time going backwards
        restarts the stream.
        """
        samples = np.asarray(samples, np.float32)
        if self._audio is None or (self._last_start is not None and start < self._last_start):
            self._start_timeline(start, frame, None)
        elif start > self._a0 + len(self._audio):
            last = self._motion[-1] if self._motion else None
            self.resyncs += 1
            self._start_timeline(start, frame, last)
        self._last_start = start
        end = self._a0 + len(self._audio)
        new = samples[max(0, end - start) :]
        if len(new):
            self._audio = np.concatenate([self._audio, new])
        self._advance_mel()
        self._advance_frames()
        self._advance_pose()
        self._trim()

    def _advance_mel(self) -> None:
        p = self.p.mel
        hop, half = p.hop_size, p.n_fft // 2
        m_start = self._m0 + len(self._mel)
        end = self._a0 + len(self._audio)
        m_stop = (end - half) // hop + 1  # frame m needs samples [hop*m - half - 1, hop*m + half)
        if m_stop <= m_start:
            return
        lo, hi = hop * m_start - half - 1, hop * (m_stop - 1) + half
        seg = self._audio[max(lo, self._a0) - self._a0 : hi - self._a0].astype(np.float64)
        if lo < self._a0:  # only at a timeline start: samples before it are unknown (zeros)
            seg = np.concatenate([np.zeros(self._a0 - lo), seg])
        y = seg[1:] - p.preemphasis * seg[:-1]
        frames = np.lib.stride_tricks.sliding_window_view(y, p.n_fft)[::hop][: m_stop - m_start]
        mag = np.abs(np.fft.rfft(frames * self._front.window, axis=1))
        mel = mag @ self._front.mel_basis.T
        db = 20 * np.log10(np.maximum(np.exp(p.min_level_db / 20 * np.log(10)), mel)) - p.ref_level_db
        top = p.max_abs_value
        rows = np.clip(2 * top * ((db - p.min_level_db) / -p.min_level_db) - top, -top, top)
        self._mel = np.concatenate([self._mel, rows])

    def _mel_window(self, frame: int) -> np.ndarray:
        idx = np.maximum(window_start(frame, self.p.mel) + np.arange(self.p.mel.mel_window), self._mel_lo)
        return self._mel[idx - self._m0].T  # 80×16

    def _advance_frames(self) -> None:
        mel_end = self._m0 + len(self._mel)
        j = self.frames_ready
        todo = []
        while window_start(j, self.p.mel) + self.p.mel.mel_window - 1 < mel_end:
            todo.append(j)
            j += 1
        if not todo:
            return
        mels = torch.from_numpy(np.stack([self._mel_window(f) for f in todo]).astype(np.float32))
        with torch.inference_mode():
            self._exp_emb.extend(self.nets.exp_embed(mels))
            if not self.p.still:
                self._pose_emb.extend(self.nets.pose_embed(mels))
        blink = self._blink.ratio if isinstance(self._blink, BlinkSchedule) else self._blink
        self._ratio.extend(float(blink(f)) for f in todo)

    def _advance_pose(self) -> None:
        if self.p.still:
            return
        hop, seq = self.p.pose_chunk, self.nets.seq_len
        ref_pose = torch.from_numpy(self._ref_pose)
        while self._j0 + (self._decoded + 1) * hop < self.frames_ready:
            m = self._decoded + 1
            last = self._j0 + m * hop
            first = max(self._j0 + 1, last - seq + 1)
            emb = torch.stack(self._pose_emb[first - self._base : last + 1 - self._base])
            if len(emb) < seq:
                emb = torch.cat([emb[:1].expand(seq - len(emb), -1), emb])
            block = self._z_block + ((m - 1) * hop) // seq
            with torch.inference_mode():
                out = self.nets.pose_decode(emb, ref_pose, self.p.style, self.latents(block)).numpy()
            rows = out[seq - hop :].copy()
            joint = seq - 1 - hop  # row of frame last-hop, written by the previous decode
            if hop < seq and m > 1 and joint >= seq - (last - first + 1):
                delta = self._motion[-1] - out[joint]
                weights = 1 - np.arange(1, hop + 1, dtype=np.float32)[:, None] / (hop + 1)
                rows += delta[None] * weights
            self._motion.extend(rows.astype(np.float32))
            self._decoded = m
            self.decodes += 1
            self._z_next = max(self._z_next, block + 1)

    def set_source(self, source: SourceCoeffs) -> None:
        """The avatar whose reference pose conditions later pose decodes."""
        self._ref_pose = source.ref_pose

    def _trim(self) -> None:
        keep_from = self.frames_ready - _HISTORY - self.p.lookahead
        if not self.p.still:
            # the next pose decode reads up to seq_len embeddings back from its last frame
            keep_from = min(keep_from, self.pose_ready + 1 - self.nets.seq_len)
        drop = keep_from - self._base
        if drop > 0:
            del self._exp_emb[:drop], self._ratio[:drop]
            if not self.p.still:
                del self._pose_emb[:drop], self._motion[:drop]
            self._base += drop
        # mel rows and audio that no future frame reads
        need_mel = window_start(self.frames_ready, self.p.mel)
        mdrop = min(need_mel - self._m0, len(self._mel))
        if mdrop > 0:
            self._mel = self._mel[mdrop:]
            self._m0 += mdrop
        need_audio = self.p.mel.hop_size * (self._m0 + len(self._mel)) - self.p.mel.n_fft // 2 - 1
        adrop = min(need_audio - self._a0, len(self._audio))
        if adrop > 0:
            self._audio = self._audio[adrop:]
            self._a0 += adrop

    # -- windows out -------------------------------------------------------------------------

    def window(self, frame: int, source: SourceCoeffs) -> np.ndarray:
        """The C×27 semantic window of coefficient ``frame`` (C = 70, or 73 with a crop).

        Rows past ``frame + lookahead`` or past the newest computed frame repeat the last
        one; head pose past the newest decode holds it.
        """
        newest = min(frame + self.p.lookahead, self.frames_ready - 1)
        if newest < self._j0 or frame < self._base:
            raise RuntimeError(f"coefficient frame {frame} is not in the timeline ({self._base}..{newest})")
        rows = np.clip(window_rows(frame, newest + 1), max(self._j0, self._base), newest)
        uniq, inv = np.unique(rows, return_inverse=True)
        emb = torch.stack([self._exp_emb[r - self._base] for r in uniq])
        ratio = torch.tensor([[self._ratio[r - self._base]] for r in uniq])
        with torch.inference_mode():
            exp = self.nets.exp_head(emb, torch.from_numpy(source.ref_exp)[None].expand(len(uniq), -1), ratio)
        exp = exp.numpy() * np.float32(self.p.expression_scale)
        pose = self._smoothed_pose(uniq - self.p.pose_delay, source.ref_pose)
        coeffs = np.concatenate([exp, pose], axis=1)
        if source.crop is not None:
            coeffs = np.concatenate([coeffs, np.repeat(source.crop[None], len(uniq), 0)], axis=1)
        return np.ascontiguousarray(coeffs[inv].T.astype(np.float32))

    def _smoothed_pose(self, frames: np.ndarray, ref_pose: np.ndarray) -> np.ndarray:
        """Smoothed pose at ``frames``; frames whose smoothing would need undecoded rows hold
        the newest fully smoothed one (frames before the timeline hold its first)."""
        if self.p.still:
            return np.repeat(ref_pose[None], len(frames), 0)
        top = self.pose_ready
        if top < self._j0 + 12:  # too few rows for the 13-frame filter: hold the first pose
            return np.repeat((ref_pose + self._motion[0])[None], len(frames), 0).astype(np.float32)
        want = np.clip(frames, max(self._j0, self._base), top - 6)
        lo = max(self._base, min(int(want.min()) - 12, top - 24))
        raw = ref_pose[None] + np.stack(self._motion[lo - self._base : top + 1 - self._base])
        smooth = smooth_pose(raw)
        return smooth[want - lo]


def coeff_frame(t: float) -> int:
    """The coefficient frame shown at stream time t (s)."""
    return int(round(t * COEFF_FPS))


__all__ = [
    "AudioNets",
    "BlinkSchedule",
    "CoefficientStream",
    "Latents",
    "SourceCoeffs",
    "StreamParams",
    "clip_coefficients",
    "coeff_frame",
]
