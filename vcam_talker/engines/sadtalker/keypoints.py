"""Canonical keypoints, head pose/expression, and the keypoint transformation.

- :class:`KPDetector`: source image -> 15 canonical 3-D keypoints (state-dict prefix
  ``kp_extractor.`` in the combined checkpoint).
- :class:`HeadMotion`: the pose/expression parameters produced by MappingNet.
- :func:`transform_keypoints`: canonical keypoints + HeadMotion -> posed keypoints, with the
  reference's exact quirks (3.14 for pi, only t[y] applied), and optional free-view angles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hparams import CommonParams, KPDetectorParams
from .layers import AntiAliasDownsample, KPHourglass, make_coordinate_grid

#: the reference converts degrees to radians with 3.14, not pi; keypoints move ~1e-3 otherwise
PI_AS_IN_REFERENCE = 3.14


@dataclass(frozen=True)
class HeadMotion:
    """Head pose and expression for a batch of B frames.

    yaw, pitch, roll: BxN bin logits (N = num_bins, 66 officially; see :func:`bins_to_degrees`);
    t: Bx3 translation (only t[:, 1] is used); exp: Bx(3*num_kp) keypoint offsets.
    """

    yaw: torch.Tensor
    pitch: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor
    exp: torch.Tensor


class KPDetector(nn.Module):
    """Canonical keypoint detector. x: Bx3xHxW in [0,1] -> Bx(num_kp)x3 (x, y, z in [-1, 1]).

    The image is anti-alias downsampled by ``scale_factor`` (256 -> 64), run through a 2-D/3-D
    hourglass, turned into num_kp heatmap logits over a DxH'xW' volume, softmaxed over the whole
    volume at ``temperature``, and each keypoint is the expectation of the coordinate grid.
    """

    def __init__(self, params: KPDetectorParams = KPDetectorParams(), common: CommonParams = CommonParams()) -> None:
        super().__init__()
        if common.estimate_jacobian:
            raise ValueError("KPDetector: estimate_jacobian=True is not supported (the SadTalker renderer runs without)")
        self.predictor = KPHourglass(
            params.block_expansion,
            in_features=common.image_channel,
            reshape_features=params.reshape_channel,
            reshape_depth=params.reshape_depth,
            num_blocks=params.num_blocks,
            max_features=params.max_features,
        )
        self.kp = nn.Conv3d(self.predictor.out_filters, common.num_kp, 3, padding=1)
        self.temperature = params.temperature
        self.scale_factor = params.scale_factor
        if params.scale_factor != 1:
            self.down = AntiAliasDownsample(common.image_channel, params.scale_factor)

    def antialias(self, x: torch.Tensor) -> torch.Tensor:
        """x: Bx3xHxW -> Bx3x(H*scale)x(W*scale): the blurred, subsampled input of the hourglass."""
        return self.down(x) if self.scale_factor != 1 else x

    def heatmaps(self, x: torch.Tensor) -> torch.Tensor:
        """x: Bx3xHxW in [0,1] -> BxKxDxH'xW' keypoint probability volumes (each sums to 1)."""
        logits = self.kp(self.predictor(self.antialias(x)))
        shape = logits.shape
        prob = F.softmax(logits.view(shape[0], shape[1], -1) / self.temperature, dim=2)
        return prob.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: Bx3xHxW in [0,1] -> BxKx3 canonical keypoints (x along W, y along H, z along D)."""
        heat = self.heatmaps(x)
        grid = make_coordinate_grid(heat.shape[2:], heat.dtype, heat.device)
        return (heat.unsqueeze(-1) * grid[None, None]).sum(dim=(2, 3, 4))


def bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """Expected angle of a bin distribution. logits: BxN -> B degrees, softmax·[0..N-1]·3 − 99."""
    idx = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device)
    return torch.sum(F.softmax(logits, dim=1) * idx, 1) * 3 - 99


def rotation_matrix(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Head rotation from angles in degrees (each B) -> Bx3x3 = Rx(pitch) · Ry(yaw) · Rz(roll).

    Radians use 3.14/180 as the reference does.
    """
    p, y, r = (a / 180 * PI_AS_IN_REFERENCE for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(p), torch.zeros_like(p)

    def mat(*rows: torch.Tensor) -> torch.Tensor:
        return torch.stack(rows, dim=1).view(-1, 3, 3)

    rx = mat(one, zero, zero, zero, torch.cos(p), -torch.sin(p), zero, torch.sin(p), torch.cos(p))
    ry = mat(torch.cos(y), zero, torch.sin(y), zero, one, zero, -torch.sin(y), zero, torch.cos(y))
    rz = mat(torch.cos(r), -torch.sin(r), zero, torch.sin(r), torch.cos(r), zero, zero, zero, one)
    return torch.einsum("bij,bjk,bkm->bim", rx, ry, rz)


def _as_batch(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).expand_as(like)


def head_angles(
    motion: HeadMotion,
    yaw: torch.Tensor | float | None = None,
    pitch: torch.Tensor | float | None = None,
    roll: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Yaw, pitch, roll in degrees -> Bx3; any angle given (degrees, scalar or B) replaces the predicted one."""
    angles = [bins_to_degrees(motion.yaw), bins_to_degrees(motion.pitch), bins_to_degrees(motion.roll)]
    for i, override in enumerate((yaw, pitch, roll)):
        if override is not None:
            angles[i] = _as_batch(override, angles[i])
    return torch.stack(angles, dim=1)


def transform_keypoints(
    kp_canonical: torch.Tensor,
    motion: HeadMotion,
    *,
    yaw: torch.Tensor | float | None = None,
    pitch: torch.Tensor | float | None = None,
    roll: torch.Tensor | float | None = None,
    use_exp: bool = True,
) -> torch.Tensor:
    """Pose the canonical keypoints. kp_canonical: BxKx3 (or 1xKx3, broadcast), motion: batch B -> BxKx3.

    kp = R(yaw, pitch, roll) · kp + (0, t_y, 0) + exp.view(K, 3). Only the y translation is
    applied, as in the reference (which zeroes t[x], t[z] in place; we leave ``motion`` untouched).
    yaw/pitch/roll (degrees, scalar or B): free-view override of the predicted angles.
    use_exp=False drops the expression offsets.
    """
    ypr = head_angles(motion, yaw, pitch, roll)
    rot = rotation_matrix(ypr[:, 0], ypr[:, 1], ypr[:, 2])
    kp = kp_canonical.expand(rot.shape[0], -1, -1) if kp_canonical.shape[0] == 1 else kp_canonical
    kp_rot = torch.einsum("bmp,bkp->bkm", rot, kp)
    t = motion.t
    t_y = torch.stack([torch.zeros_like(t[:, 1]), t[:, 1], torch.zeros_like(t[:, 1])], dim=1)
    out = kp_rot + t_y[:, None, :]
    if use_exp:
        out = out + motion.exp.view(motion.exp.shape[0], -1, 3)
    return out
