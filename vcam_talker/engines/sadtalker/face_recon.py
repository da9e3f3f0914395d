"""The 3DMM face reconstruction net (Deep3DFaceRecon's ``net_recon``) and its 257-vector layout.

Backbone: a ResNet-50 v1.5 in torchvision's parameter layout (so the official
``face_3drecon.backbone.*`` keys load as they are), written here so that torchvision is not
needed. Bottleneck blocks [3, 4, 6, 3], stride on the 3×3 conv, no ``fc``; average pooling
leaves N×2048×1×1. Seven 1×1 conv heads (``final_layers.0..6``, with bias) give identity 80,
expression 64, texture 80, angles 3, lighting 27, (tx, ty) 2 and tz 1 values, concatenated in
that order to 257.

Input: N×3×224×224 RGB in [0, 1] (the :func:`.preprocess.align_for_recon` crop / 255, built
by :func:`recon_input`), no mean/std normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

#: widths of the seven heads, in concatenation order
HEAD_SIZES = (80, 64, 80, 3, 27, 2, 1)
#: slices of the 257 vector
COEFF_SLICES = {
    "id": slice(0, 80),
    "exp": slice(80, 144),
    "tex": slice(144, 224),
    "angle": slice(224, 227),
    "gamma": slice(227, 254),
    "trans": slice(254, 257),
}


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 (×4 channels), each with BN; identity or 1×1-conv+BN shortcut.

    x: N×cin×H×W -> N×4w×H/s×W/s.
    """

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


class ResNetBackbone(nn.Module):
    """ResNet without its classifier. x: N×3×H×W -> N×(8·base·4)×1×1 (N×2048×1×1 officially).

    base: width of the stem and first stage (64); blocks: bottlenecks per stage (3, 4, 6, 3).
    """

    def __init__(self, base: int = 64, blocks: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = base
        for i, n in enumerate(blocks):
            width = base * 2**i
            stage = []
            for j in range(n):
                stage.append(Bottleneck(cin, width, stride=2 if (i > 0 and j == 0) else 1))
                cin = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(blocks)
        self.out_channels = cin
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.avgpool(x)


class FaceReconNet(nn.Module):
    """ResNet-50 backbone + seven 1×1 heads. x: N×3×224×224 in [0, 1] -> N×257."""

    def __init__(
        self, base: int = 64, blocks: Sequence[int] = (3, 4, 6, 3), head_sizes: Sequence[int] = HEAD_SIZES
    ) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(base, blocks)
        c = self.backbone.out_channels
        self.final_layers = nn.ModuleList([nn.Conv2d(c, n, 1, bias=True) for n in head_sizes])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: N×3×224×224 -> N×2048 globally pooled backbone features (the heads' input)."""
        return self.backbone(x).flatten(1)

    def heads(self, feat: torch.Tensor) -> torch.Tensor:
        """feat: N×2048 -> N×257, the seven heads concatenated in :data:`HEAD_SIZES` order."""
        f = feat[:, :, None, None]
        return torch.cat([head(f) for head in self.final_layers], dim=1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.features(x))


def recon_input(image224: np.ndarray) -> torch.Tensor:
    """224×224×3 uint8 RGB aligned crop -> 1×3×224×224 float32 in [0, 1] (CPU), the net's input.

    Divided in float64 then cast, as the reference does (identical to a float32 division for
    every uint8 value); no mean/std normalisation, no channel swap.
    """
    img = np.asarray(image224)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"recon_input wants an H×W×3 uint8 image, got {img.shape} {img.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return x.to(torch.float64).div(255).float()[None]


def split_coeffs(coeffs: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor | np.ndarray]:
    """Split N×257 into id N×80, exp N×64, tex N×80, angle N×3, gamma N×27, trans N×3 (tx, ty, tz)."""
    return {name: coeffs[:, s] for name, s in COEFF_SLICES.items()}


def coeff_3dmm_row(coeffs: np.ndarray | torch.Tensor, trans_params: np.ndarray) -> np.ndarray:
    """The row SadTalker stores per source image: exp 64 ‖ angle 3 ‖ trans 3 ‖ (s, tx, ty).

    coeffs: N×257; trans_params: the 5 alignment values [w0, h0, s, tx, ty] -> N×73 float32.
    """
    c = coeffs.detach().cpu().numpy() if isinstance(coeffs, torch.Tensor) else np.asarray(coeffs)
    parts = split_coeffs(c)
    crop = np.broadcast_to(np.asarray(trans_params, dtype=np.float32)[2:5], (c.shape[0], 3))
    return np.concatenate([parts["exp"], parts["angle"], parts["trans"], crop], axis=1).astype(np.float32)
