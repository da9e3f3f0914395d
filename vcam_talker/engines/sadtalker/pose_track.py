"""The head-pose part of the coefficient timeline: audio2pose decodes on the reference's
chunk grid, and the Savitzky–Golay smoothing of the decoded rows. A mixin of
:class:`.timeline.CoefficientTimeline`, whose ``reset`` sets the state it reads."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .audio2pose import smooth_pose
from .coeffs import AudioNets, SourceCoeffs
from .presets import TimelineParams
from .rowcache import RowCache


class PoseTrack:
    """Raw head motion from pose decodes, and the smoothed pose rows read from it.

    ``_motion`` holds the raw motion of clip frames ``_mbase ..`` (row 0 is zeros, the
    reference's first frame); ``_decode_ends`` the last frame of each decode.
    """

    nets: AudioNets
    p: TimelineParams
    latents: Callable[[int], torch.Tensor]
    decodes: int
    frames_ready: int
    num_frames: int | None
    _base: int
    _pose_emb: list[torch.Tensor]
    _motion: list[np.ndarray]
    _mbase: int
    _decode_ends: list[int]
    _z_first: int
    _z_next: int
    _ref_pose: np.ndarray
    _rows: RowCache

    @property
    def pose_ready(self) -> int:
        """The newest clip frame with decoded (raw) head motion."""
        return self._mbase + len(self._motion) - 1

    @property
    def decode_ends(self) -> list[int]:
        """The last clip frame of each pose decode (the newest few when streaming)."""
        return list(self._decode_ends)

    def _advance_pose(self) -> None:
        """Run every pose decode the embeddings allow (and the remainder one once ended)."""
        if self.p.still:
            return
        hop, seq, t = self.p.pose_chunk, self.nets.seq_len, self.num_frames
        ref_pose = torch.from_numpy(self._ref_pose)
        while True:
            done = self.pose_ready
            nxt = (done // hop + 1) * hop
            if nxt < self.frames_ready and (t is None or nxt <= t - 1):
                last = nxt
            elif t is not None and done < t - 1:
                last = t - 1  # the remainder decode
            else:
                return
            first = max(1, last - seq + 1)
            emb = torch.stack(self._pose_emb[first - self._base : last + 1 - self._base])
            if len(emb) < seq:
                emb = torch.cat([emb[:1].expand(seq - len(emb), -1), emb])
            z = self._z_first + (last - 1) // seq  # one latent per 32 frames, as the reference
            with torch.inference_mode():
                out = self.nets.pose_decode(emb, ref_pose, self.p.style, self.latents(z)).numpy()
            keep = last - done
            rows = out[seq - keep :].copy()
            if hop < seq and done >= first and done > 0:
                # a shorter hop re-decodes overlapping frames: join the new rows to the old path
                delta = self._motion[-1] - out[seq - 1 - keep]
                rows += delta[None] * (1 - np.arange(1, keep + 1, dtype=np.float32)[:, None] / (keep + 1))
            self._motion.extend(rows.astype(np.float32))
            self._decode_ends.append(last)
            self.decodes += 1
            self._z_next = max(self._z_next, z + 1)

    def _drop_decodes_from(self, frame: int) -> None:
        """Forget the decodes that read clip frame ``frame`` or later (the clip's end redoes them)."""
        ends = [e for e in self._decode_ends if e < frame]
        self._decode_ends = ends
        top = ends[-1] if ends else 0
        del self._motion[max(1, top + 1 - self._mbase) :]

    def _trim_pose(self, keep_from: int) -> None:
        """Drop raw motion before clip frame ``keep_from`` (streaming); keep the newest decode ends."""
        mdrop = min(keep_from - self._mbase, len(self._motion) - 1)
        if mdrop > 0:
            del self._motion[:mdrop]
            self._mbase += mdrop
        del self._decode_ends[: max(0, len(self._decode_ends) - 8)]

    def pose_embeddings(self, rows: np.ndarray) -> torch.Tensor:
        """audio2pose encoder outputs of clip frames ``rows`` (held): N×c4."""
        return torch.stack([self._pose_emb[r - self._base] for r in rows])

    def raw_pose(self, rows: np.ndarray, ref_pose: np.ndarray) -> np.ndarray:
        """ref pose + decoded motion of clip frames ``rows``: N×6 float32."""
        return (ref_pose[None] + np.stack([self._motion[r - self._mbase] for r in rows])).astype(np.float32)

    def smoothed_pose(self, rows: np.ndarray, ref_pose: np.ndarray) -> np.ndarray:
        """Smoothed pose of clip frames ``rows``: N×6. A row that is not final yet (its smoothing
        reads undecoded rows) holds the newest final one."""
        rows = np.asarray(rows)
        if self.p.still:
            return np.repeat(ref_pose[None], len(rows), 0).astype(np.float32)
        top, t = self.pose_ready, self.num_frames
        ended = t is not None and top == t - 1
        final = top if ended else (top - 6 if top >= 12 else -1)
        if final < 0:  # too few rows for the 13-frame filter: hold the first pose
            return np.repeat(self.raw_pose(np.array([0]), ref_pose), len(rows), 0)
        want = np.clip(rows, max(0, self._mbase), final)
        lo, hi = max(int(want.min()) - 6, self._mbase), min(int(want.max()) + 6, top)
        if lo < 6:  # the first rows come from the edge fit over rows 0..12
            lo, hi = 0, max(hi, min(12, top))
        if ended and hi > top - 6:  # and the last rows from the fit over the last 13
            hi, lo = top, max(0, min(lo, top - 12))
        smooth = smooth_pose(self.raw_pose(np.arange(lo, hi + 1), ref_pose))
        return smooth[want - lo]

    def _cached_pose(self, pose_rows: np.ndarray, source: SourceCoeffs) -> np.ndarray:
        """:meth:`smoothed_pose` of ``pose_rows`` through the row cache (``_window_rows``)."""
        c = self._rows
        top, t = self.pose_ready, self.num_frames
        final = top if t is not None and top == t - 1 else (top - 6 if top >= 12 else -1)
        if final >= 0:  # a row not final yet holds the newest final one (smoothed_pose)
            pose_rows = np.clip(pose_rows, max(0, self._mbase), final)
        return c.rows(c.pose, pose_rows, lambda r: self.smoothed_pose(r, source.ref_pose),
                      lambda r: r <= final and (r < 6 or r - 6 >= self._mbase))
