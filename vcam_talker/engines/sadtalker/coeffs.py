"""What the coefficient timeline takes in: the avatar's :class:`SourceCoeffs` and the
:class:`AudioNets` it runs (the audio stage, :class:`.stages.AudioStage`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .audio2pose import SEMANTIC_RADIUS


class AudioNets(Protocol):
    """What the timeline needs from the audio stage (see ``stages.AudioStage``)."""

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
