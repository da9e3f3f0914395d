"""MappingNet: a window of 3DMM coefficients -> head pose bins, translation and expression.

Two official checkpoints use it: ``mapping_00229-model.pth.tar`` (coeff_nc 70: exp 64, angle 3,
trans 3; crop/resize modes) and ``mapping_00109-model.pth.tar`` (coeff_nc 73, adding the crop
(s, tx, ty); full modes). Both store the state under the dict key ``'mapping'`` without prefix;
our attribute names reproduce those keys.
"""

from __future__ import annotations

import torch
from torch import nn

from .hparams import MappingParams
from .keypoints import HeadMotion


class MappingNet(nn.Module):
    """x: Bx(coeff_nc)xT coefficient windows (T = 27 officially) -> HeadMotion.

    A kernel-7 conv, then ``layer`` blocks of LeakyReLU(0.1) -> kernel-3 conv with dilation 3,
    each with a residual cropped by 3 on both ends (27 -> 21 -> 15 -> 9 -> 3), average pooling
    over time, and linear heads: yaw/pitch/roll Bx(num_bins), t Bx3, exp Bx(3*num_kp).
    """

    def __init__(self, params: MappingParams = MappingParams()) -> None:
        super().__init__()
        self.layer = params.layer
        nc = params.descriptor_nc
        self.first = nn.Sequential(nn.Conv1d(params.coeff_nc, nc, kernel_size=7))
        for i in range(params.layer):
            setattr(self, f"encoder{i}", nn.Sequential(nn.LeakyReLU(0.1), nn.Conv1d(nc, nc, kernel_size=3, dilation=3)))
        self.fc_roll = nn.Linear(nc, params.num_bins)
        self.fc_pitch = nn.Linear(nc, params.num_bins)
        self.fc_yaw = nn.Linear(nc, params.num_bins)
        self.fc_t = nn.Linear(nc, 3)
        self.fc_exp = nn.Linear(nc, 3 * params.num_kp)

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """x: Bx(coeff_nc)xT (T >= 25) -> Bx(descriptor_nc) pooled features."""
        out = self.first(x)
        for i in range(self.layer):
            out = getattr(self, f"encoder{i}")(out) + out[:, :, 3:-3]
        return out.mean(dim=2)

    def forward(self, x: torch.Tensor) -> HeadMotion:
        """x: Bx(coeff_nc)xT -> HeadMotion (yaw/pitch/roll Bx66, t Bx3 raw, exp Bx45)."""
        d = self.descriptor(x)
        return HeadMotion(yaw=self.fc_yaw(d), pitch=self.fc_pitch(d), roll=self.fc_roll(d), t=self.fc_t(d), exp=self.fc_exp(d))
