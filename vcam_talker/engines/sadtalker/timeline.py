"""SadTalker's coefficient timeline: one code path for whole clips and for live streams.

Audio goes in (``ingest``), 27-frame semantic windows come out (``window``), at the
reference's 25 coefficient frames a second. The stages are the reference's:
mel rows → per-frame mel windows → audio2exp / audio2pose embeddings → audio2exp head with the
blink ratio → audio2pose decodes → Savitzky–Golay pose smoothing → windows of coefficient rows.

Every value is computed once, as soon as the audio it depends on is in, and is then final:

- a mel row needs the 400 samples after its centre;
- a frame's embedding needs its 16 mel rows (about 132 ms of audio after the frame);
- pose decodes follow the reference's grid: decode m covers frames ``m·pose_chunk - 31 ..
  m·pose_chunk`` (front-padded with the first embedding when fewer exist) and keeps its last
  ``pose_chunk`` rows; with ``pose_chunk`` 32 that is exactly the reference's chunking;
- a smoothed pose row needs the 6 raw rows after it.

When the clip ends (``ingest(..., end=...)``, files only), it is cut to whole 640-sample frames,
the few values that read audio past the cut are recomputed with the reference's zero padding,
the remainder pose decode re-reads the last 32 frames, and windows clamp at the last frame.
A clip fed whole and ended therefore *is* the reference's offline chain
(:func:`clip_coefficients`); a live stream is the same timeline with a bounded horizon:
``lookahead`` frames after the shown one may be read, rows past it repeat the newest
allowed one, and a pose row that is not final yet holds the newest final one (or the pose
trails by ``pose_delay`` frames, so the shown pose is always final).

The pose decodes and smoothing are in :mod:`.pose_track`; the inputs in :mod:`.coeffs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from .audio2pose import SEMANTIC_RADIUS
from .coeffs import AudioNets, SourceCoeffs
from .mel import MelFrontend, window_start
from .pose_track import PoseTrack
from .presets import TimelineParams
from .randomness import Latents
from .rowcache import RowCache

#: coefficient frames of state kept behind the newest one when streaming
_HISTORY = 160


# --------------------------------------------------------------------------------------------
# The timeline
# --------------------------------------------------------------------------------------------


class CoefficientTimeline(PoseTrack):
    """Audio in, semantic windows out; see the module docstring.

    Stream samples are counted from the start of the stream; the timeline's clip starts at
    ``origin`` (a whole coefficient frame), and display frame ``j`` is clip frame
    ``j - origin / 640``. ``ratio(frame)`` gives the blink ratio of a display frame;
    ``latents(i)`` the i-th pose latent (the reference draws one per decode call).
    """

    def __init__(
        self,
        nets: AudioNets,
        params: TimelineParams,
        *,
        ratio: Callable[[int], float] | None = None,
        latents: Callable[[int], torch.Tensor] | None = None,
    ) -> None:
        if not 1 <= params.pose_chunk <= nets.seq_len:
            raise ValueError(f"pose_chunk must be 1..{nets.seq_len}, got {params.pose_chunk}")
        self.nets, self.p = nets, params
        self._ratio_fn = ratio or (lambda f: 0.0)
        self.latents = latents or Latents(0)
        self._front = MelFrontend(params.mel)
        self.decodes = 0
        self.resyncs = 0
        self._z_next = 0  # first latent no timeline has used
        self._ref_pose = np.zeros(6, np.float32)
        self.reset()

    # -- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the clip (a new stream). The latent generator keeps running."""
        self.origin: int | None = None
        self._last_start: int | None = None
        self._x = np.zeros(0, np.float32)  # clip samples [_x0, _n)
        self._x0 = 0
        self._n = 0
        self.length: int | None = None  # clip samples once ended (whole frames)
        self._mel = np.zeros((0, self.p.mel.num_mels))
        self._m0 = 0
        self._base = 0  # clip frame of the first kept per-frame entry
        self._exp_emb: list[torch.Tensor] = []
        self._pose_emb: list[torch.Tensor] = []
        self._ratio: list[float] = []
        self._motion: list[np.ndarray] = [np.zeros(6, np.float32)]  # raw motion from _mbase
        self._mbase = 0
        self._decode_ends: list[int] = []
        self._z_first = self._z_next
        self._rows = RowCache()  # final rows of window(); cleared where values are redone

    @property
    def num_frames(self) -> int | None:
        """T once the clip has ended."""
        return None if self.length is None else self.length // self.p.samples_per_frame

    @property
    def frames_ready(self) -> int:
        """Clip frames with embeddings: frames below this index."""
        return self._base + len(self._exp_emb)

    @property
    def samples(self) -> np.ndarray:
        """The clip's samples still held (offline: the whole clip, cut to whole frames)."""
        return self._x

    @property
    def mel(self) -> np.ndarray:
        """The normalised log-mel rows still held, rows × 80 float64 (offline: all of them)."""
        return self._mel

    @property
    def origin_frame(self) -> int:
        return (self.origin or 0) // self.p.samples_per_frame

    def set_source(self, source: SourceCoeffs) -> None:
        """The avatar whose reference pose conditions later pose decodes."""
        self._ref_pose = source.ref_pose

    def _begin(self, start: int) -> None:
        self.reset()
        spf = self.p.samples_per_frame
        self.origin = -(-max(0, start) // spf) * spf

    # -- audio in ----------------------------------------------------------------------------

    def ingest(self, samples: np.ndarray, start: int, end: int | None = None) -> None:
        """Add stream samples [start, start + len(samples)).

        end: the stream's last sample (exclusive) when it is known to end (a file); the clip is
        then finished. Audio overlapping what was seen extends it; a gap (frames skipped by a
        slow consumer) starts a new clip at the next whole frame; time going backwards
        restarts the stream.
        """
        if self.origin is None or (self._last_start is not None and start < self._last_start):
            self._begin(start)
        elif start > self.origin + self._n and self.length is None:
            self.resyncs += 1
            self._begin(start)
        self._last_start = start
        if self.length is not None:
            return
        stop = start + len(samples) if end is None else min(start + len(samples), end)
        new = np.asarray(samples, np.float32)[max(0, self.origin + self._n - start) : max(0, stop - start)]
        if len(new):
            self._x = np.concatenate([self._x, new])
            self._n += len(new)
        if end is not None and end <= start + len(samples):
            self._finish()
        else:
            self._advance()

    def finish(self) -> None:
        """The clip ends at the audio seen so far."""
        if self.origin is None:
            self._begin(0)
        if self.length is None:
            self._finish()

    def _finish(self) -> None:
        spf, hop, half = self.p.samples_per_frame, self.p.mel.hop_size, self.p.mel.n_fft // 2
        length = max(spf, self._n // spf * spf)  # a clip under one frame is padded to one
        if self._n < length:
            self._x = np.concatenate([self._x, np.zeros(length - self._n, np.float32)])
        self._x = self._x[: length - self._x0]
        self._n = self.length = length
        # values computed as if the audio went on are redone: mel rows whose frame passes the
        # cut, the frames reading them, and the pose decodes reading those frames
        m_bad = max(0, (length - half) // hop + 1)
        del_rows = max(0, self._m0 + len(self._mel) - m_bad)
        if del_rows:
            self._mel = self._mel[: len(self._mel) - del_rows]
        t = length // spf
        f_bad = t
        while f_bad > 0 and window_start(f_bad - 1, self.p.mel) + self.p.mel.mel_window - 1 >= m_bad:
            f_bad -= 1
        keep = max(0, f_bad - self._base)
        del self._exp_emb[keep:], self._pose_emb[keep:], self._ratio[keep:]
        self._rows.clear()
        self._drop_decodes_from(f_bad)
        self._advance()

    def _advance(self) -> None:
        self._advance_mel()
        self._advance_frames()
        self._advance_pose()
        if self.p.lookahead is not None:
            self._trim()

    def _advance_mel(self) -> None:
        p = self.p.mel
        hop, half = p.hop_size, p.n_fft // 2
        m_start = self._m0 + len(self._mel)
        if self.length is None:
            m_stop = (self._n - half) // hop + 1 if self._n >= half else 0  # row m reads y[hop·m + half - 1]
        else:
            m_stop = 1 + self.length // hop
        if m_stop <= m_start:
            return
        lo, hi = hop * m_start - half - 1, hop * (m_stop - 1) + half  # x indices (one before, for pre-emphasis)
        seg = np.zeros(hi - lo, np.float64)
        a, b = max(lo, self._x0, 0), min(hi, self._n)
        if b > a:
            seg[a - lo : b - lo] = self._x[a - self._x0 : b - self._x0]
        y = seg[1:] - p.preemphasis * seg[:-1]  # y index lo+1 .. hi-1
        # the reference pads y (not x) with zeros outside the clip
        idx = np.arange(lo + 1, hi)
        y[(idx < 0) | (idx >= self._n)] = 0.0
        frames = np.lib.stride_tricks.sliding_window_view(y, p.n_fft)[::hop][: m_stop - m_start]
        self._mel = np.concatenate([self._mel, self._front.normalise(np.abs(np.fft.rfft(frames * self._front.window, axis=1)))])

    def _mel_window(self, frame: int) -> np.ndarray:
        idx = window_start(frame, self.p.mel) + np.arange(self.p.mel.mel_window)
        top = self._m0 + len(self._mel) - 1
        return self._mel[np.clip(idx, 0, top) - self._m0].T  # 80×16

    def _advance_frames(self) -> None:
        mel_end = self._m0 + len(self._mel)
        t = self.num_frames
        j, todo = self.frames_ready, []
        while (j < t) if t is not None else (window_start(j, self.p.mel) + self.p.mel.mel_window - 1 < mel_end):
            todo.append(j)
            j += 1
        if not todo:
            return
        mels = torch.from_numpy(np.stack([self._mel_window(f) for f in todo]).astype(np.float32))
        with torch.inference_mode():
            self._exp_emb.extend(self.nets.exp_embed(mels))
            if not self.p.still:
                self._pose_emb.extend(self.nets.pose_embed(mels))
        self._ratio.extend(float(self._ratio_fn(self.origin_frame + f)) for f in todo)

    def _trim(self) -> None:
        keep_from = self.frames_ready - _HISTORY
        drop = keep_from - self._base
        if drop > 0:
            del self._exp_emb[:drop], self._ratio[:drop]
            if not self.p.still:
                del self._pose_emb[:drop]
            self._base += drop
        self._trim_pose(keep_from)
        self._rows.drop_before(self._base)
        need_mel = max(0, window_start(self._base, self.p.mel))
        mdrop = min(need_mel - self._m0, len(self._mel))
        if mdrop > 0:
            self._mel = self._mel[mdrop:]
            self._m0 += mdrop
        need_x = self.p.mel.hop_size * self._m0 - self.p.mel.n_fft // 2 - 1
        xdrop = min(need_x - self._x0, len(self._x))
        if xdrop > 0:
            self._x = self._x[xdrop:]
            self._x0 += xdrop

    # -- coefficients out --------------------------------------------------------------------

    def clip_frame(self, display_frame: int) -> int:
        """The clip frame shown at a display frame (clamped into the clip)."""
        k = max(0, display_frame - self.origin_frame)
        t = self.num_frames
        return min(k, t - 1) if t is not None else k

    def mel_windows(self, frames: np.ndarray) -> np.ndarray:
        """Clip frames' mel windows, N×80×16 float32 (frames still held)."""
        return np.stack([self._mel_window(int(f)) for f in frames]).astype(np.float32)

    def expression(self, rows: np.ndarray, source: SourceCoeffs) -> np.ndarray:
        """Expression coefficients of clip frames ``rows`` (embedded and held). N×64 float32,
        expression_scale applied."""
        return self.expression_tensor(rows, source).cpu().numpy()

    def expression_tensor(self, rows: np.ndarray, source: SourceCoeffs) -> torch.Tensor:
        """:meth:`expression` on the nets' device (what the live window reads: no host copy)."""
        uniq, inv = np.unique(rows, return_inverse=True)
        emb = torch.stack([self._exp_emb[r - self._base] for r in uniq])
        ratio = torch.tensor([[self._ratio[r - self._base]] for r in uniq])
        with torch.inference_mode():
            exp = self.nets.exp_head(emb, torch.from_numpy(source.ref_exp)[None].expand(len(uniq), -1), ratio)
            exp = exp * np.float32(self.p.expression_scale)
            return exp if len(uniq) == len(rows) and (np.diff(rows) > 0).all() else exp[torch.from_numpy(inv)]

    def coefficients(self, rows: np.ndarray, source: SourceCoeffs, pose_rows: np.ndarray | None = None) -> np.ndarray:
        """Coefficient rows (exp ‖ pose [‖ crop]) of clip frames ``rows``: N×C float32.
        pose_rows: the frames whose pose to use (default ``rows``)."""
        rows = np.asarray(rows)
        exp = self.expression(rows, source)
        pose = self.smoothed_pose(rows if pose_rows is None else pose_rows, source.ref_pose)
        parts = [exp, pose] + ([np.repeat(source.crop[None], len(rows), 0)] if source.crop is not None else [])
        return np.concatenate(parts, axis=1).astype(np.float32)

    def _window_indices(self, display_frame: int) -> tuple[np.ndarray, np.ndarray]:
        """The clip frames of a window's 27 rows and of their (delayed) poses."""
        k = self.clip_frame(display_frame)
        top = self.frames_ready - 1
        if self.p.lookahead is not None:
            top = min(top, k + self.p.lookahead)
        if top < k or k < self._base:
            raise RuntimeError(f"coefficient frame {k} is not in the timeline ({self._base}..{top})")
        rows = np.clip(np.arange(k - SEMANTIC_RADIUS, k + SEMANTIC_RADIUS + 1), 0, top)
        rows = np.maximum(rows, self._base)
        pose_rows = np.maximum(rows - self.p.pose_delay, 0)
        return rows, pose_rows

    def window(self, display_frame: int, source: SourceCoeffs) -> np.ndarray:
        """The C×27 semantic window shown at ``display_frame`` (C = 70, or 73 with a crop), on
        the host (offline arrays and tests; the live path reads :meth:`window_tensor`).

        Rows clamp to the clip, to the audio seen so far and to ``lookahead`` frames ahead.
        """
        return self.window_tensor(display_frame, source).cpu().numpy()

    def window_tensor(self, display_frame: int, source: SourceCoeffs) -> torch.Tensor:
        """:meth:`window` on the nets' device: cached expression rows stay there, the pose
        (numpy smoothing) and crop rows go up; nothing comes back to the host."""
        rows, pose_rows = self._window_indices(display_frame)
        return self._window_rows(rows, source, pose_rows).T

    def _window_rows(self, rows: np.ndarray, source: SourceCoeffs, pose_rows: np.ndarray) -> torch.Tensor:
        """:meth:`coefficients` through the row cache: a row is kept once final (expression:
        once embedded; pose: once its 13-frame smoothing reads only decoded rows, the start's
        edge fit included; both until the clip's end redoes them)."""
        c = self._rows
        c.use(source)
        exp = c.rows(c.exp, rows, lambda r: self.expression_tensor(r, source), lambda r: True, stack=torch.stack)
        if self.p.still:
            pose = np.repeat(source.ref_pose[None], len(rows), 0).astype(np.float32)
        else:
            pose = self._cached_pose(pose_rows, source)
        parts = [pose] + ([np.repeat(source.crop[None], len(rows), 0)] if source.crop is not None else [])
        host = torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))
        return torch.cat([exp, host.to(exp.device)], 1)


# --------------------------------------------------------------------------------------------
# The offline form
# --------------------------------------------------------------------------------------------


def clip_timeline(
    nets: AudioNets,
    wav: np.ndarray,
    source: SourceCoeffs,
    params: TimelineParams,
    *,
    ratio: np.ndarray | None = None,
    latents: Callable[[int], torch.Tensor] | None = None,
) -> CoefficientTimeline:
    """A whole 16 kHz float wave through the timeline, ended: the reference's offline chain.

    ratio: T (or T×1) blink ratios (default zeros); latents: index -> 64, one per pose decode.
    """
    params = replace(params, lookahead=None)
    r = None if ratio is None else np.asarray(ratio, np.float32).reshape(-1)
    tl = CoefficientTimeline(nets, params, ratio=(lambda f: float(r[f])) if r is not None else None, latents=latents)
    tl.set_source(source)
    wav = np.asarray(wav, np.float32)
    tl.ingest(wav, 0, end=len(wav))
    return tl


def clip_coefficients(
    nets: AudioNets,
    wav: np.ndarray,
    source: SourceCoeffs,
    params: TimelineParams = TimelineParams(),
    *,
    ratio: np.ndarray | None = None,
    latents: Callable[[int], torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """The offline chain's arrays for a whole clip (float32): ``indiv_mels`` T×80×16,
    ``exp`` T×64, ``pose_raw`` / ``pose_smoothed`` T×6, ``coeffs`` T×C, ``windows`` T×C×27."""
    tl = clip_timeline(nets, wav, source, params, ratio=ratio, latents=latents)
    frames = np.arange(tl.num_frames)
    return {
        "indiv_mels": tl.mel_windows(frames),
        "exp": tl.expression(frames, source),
        "pose_raw": tl.raw_pose(frames, source.ref_pose) if not params.still else np.repeat(source.ref_pose[None], len(frames), 0),
        "pose_smoothed": tl.smoothed_pose(frames, source.ref_pose),
        "coeffs": tl.coefficients(frames, source),
        "windows": np.stack([tl.window(int(f), source) for f in frames]),
    }


__all__ = ["AudioNets", "CoefficientTimeline", "SourceCoeffs", "clip_coefficients", "clip_timeline"]
