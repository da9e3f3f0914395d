"""Building blocks shared by the SadTalker renderer networks.

Attribute names (``conv``, ``norm``, ``down_blocks``, ``mlp_shared`` ...) are chosen so that
the state-dict keys equal those of the official checkpoints; do not rename them.
BatchNorm layers are plain ``nn.BatchNorm2d/3d``: the official SynchronizedBatchNorm has the
same state-dict entries and the same eval-mode arithmetic (eps 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def make_coordinate_grid(
    spatial_size: Sequence[int], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Identity sampling grid. (D, H, W) -> DxHxWx3 holding (x, y, z) in [-1, 1].

    Coordinates are 2*i/(n-1) - 1 (corner-aligned), although every grid_sample in the renderer
    uses align_corners=False; the reference does the same, and matching it matters.
    """
    d, h, w = spatial_size

    def axis(n: int) -> torch.Tensor:
        v = torch.arange(n, dtype=dtype, device=device)
        return 2 * (v / (n - 1)) - 1

    z, y, x = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def kp_to_gaussian(kp: torch.Tensor, spatial_size: Sequence[int], variance: float) -> torch.Tensor:
    """Unnormalised Gaussian blobs at keypoints. kp: BxKx3 (x, y, z) -> BxKxDxHxW, peak 1."""
    grid = make_coordinate_grid(spatial_size, kp.dtype, kp.device)
    diff = grid.view(1, 1, *grid.shape) - kp.view(*kp.shape[:2], 1, 1, 1, 3)
    return torch.exp(-0.5 * (diff**2).sum(-1) / variance)


def grid_sample_3d(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Trilinear warp with the reference's settings (zero padding, align_corners=False).

    volume: NxCxDxHxW, grid: NxD'xH'xW'x3 (x, y, z) -> NxCxD'xH'xW'.
    """
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class AntiAliasDownsample(nn.Module):
    """Gaussian blur then integer subsampling. x: BxCxHxW -> BxCx(H*scale)x(W*scale).

    The blur kernel is the state-dict buffer ``weight`` (Cx1xKxK). It is initialised to the
    normalised Gaussian (sigma = (1/scale - 1)/2, K = 2*round(4*sigma)+1), but checkpoints carry
    their own copy and the loaded one is what runs.
    """

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        sigma = (1 / scale - 1) / 2
        size = 2 * round(sigma * 4) + 1
        self.pad_before = size // 2
        self.pad_after = self.pad_before - 1 if size % 2 == 0 else self.pad_before
        self.stride = int(1 / scale)
        self.groups = channels
        r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        g = torch.exp(-(r**2) / (2 * sigma**2))
        kernel = g[:, None] * g[None, :]
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, size, size).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BxCxHxW -> BxCx(H/stride)x(W/stride)."""
        x = F.pad(x, (self.pad_before, self.pad_after, self.pad_before, self.pad_after))
        x = F.conv2d(x, self.weight, groups=self.groups)
        return x[:, :, :: self.stride, :: self.stride]


class SameBlock2d(nn.Module):
    """conv -> BatchNorm -> ReLU (or LeakyReLU 0.01). BxCinxHxW -> BxCoutxHxW."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1, lrelu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(cout)
        self.ac = nn.LeakyReLU(0.01) if lrelu else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BxCinxHxW -> BxCoutxHxW."""
        return self.ac(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    """conv3x3 -> BatchNorm -> ReLU -> 2x2 average pool. BxCinxHxW -> BxCoutx(H/2)x(W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BxCinxHxW -> BxCoutx(H/2)x(W/2)."""
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class DownBlock3d(nn.Module):
    """conv3d 3 -> BatchNorm3d -> ReLU -> average pool over (1, 2, 2). BxCinxDxHxW -> BxCoutxDx(H/2)x(W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BxCinxDxHxW -> BxCoutxDx(H/2)x(W/2)."""
        y = F.relu(self.norm(self.conv(x)))
        if y.dtype == torch.bfloat16 and y.device.type == "cpu":  # no CPU bfloat16 avg_pool3d kernel
            return F.avg_pool3d(y.float(), (1, 2, 2)).to(y.dtype)
        return F.avg_pool3d(y, (1, 2, 2))


class UpBlock3d(nn.Module):
    """nearest upsample over (1, 2, 2) -> conv3d 3 -> BatchNorm3d -> ReLU. BxCinxDxHxW -> BxCoutxDx2Hx2W."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BxCinxDxHxW -> BxCoutxDx2Hx2W."""
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class ResBlock3d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(bn2(conv1(relu(bn1(x)))))). BxCxDxHxW -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm1 = nn.BatchNorm3d(channels)
        self.norm2 = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BxCxDxHxW -> BxCxDxHxW."""
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


def _hourglass_width(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * 2**level)


class KPHourglass(nn.Module):
    """The keypoint detector's 2-D encoder / 3-D decoder, without skips.

    x: BxCinxHxW -> BxC'xDx(H)x(W), with C' = min(max_features, block_expansion) and D = reshape_depth:
    ``num_blocks`` 2-D down blocks, a 1x1 conv to ``reshape_features`` channels viewed as
    (reshape_features/D)xD, then ``num_blocks`` 3-D up blocks that double H and W.
    """

    def __init__(
        self,
        block_expansion: int,
        in_features: int,
        reshape_features: int,
        reshape_depth: int,
        num_blocks: int,
        max_features: int,
    ) -> None:
        super().__init__()
        self.down_blocks = nn.Sequential()
        for i in range(num_blocks):
            cin = in_features if i == 0 else _hourglass_width(block_expansion, max_features, i)
            self.down_blocks.add_module(f"down{i}", DownBlock2d(cin, _hourglass_width(block_expansion, max_features, i + 1)))
        self.conv = nn.Conv2d(_hourglass_width(block_expansion, max_features, num_blocks), reshape_features, 1)
        self.up_blocks = nn.Sequential()
        for i in range(num_blocks):
            cin = _hourglass_width(block_expansion, max_features, num_blocks - i)
            cout = _hourglass_width(block_expansion, max_features, num_blocks - i - 1)
            self.up_blocks.add_module(f"up{i}", UpBlock3d(cin, cout))
        self.reshape_depth = reshape_depth
        self.out_filters = _hourglass_width(block_expansion, max_features, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BxCinxHxW -> BxC'xDxHxW (H, W divisible by 2**num_blocks)."""
        out = self.conv(self.down_blocks(x))
        b, c, h, w = out.shape
        out = out.view(b, c // self.reshape_depth, self.reshape_depth, h, w)
        return self.up_blocks(out)


class HourglassEncoder(nn.Module):
    """3-D U-Net encoder: returns [x, level1, ..., levelN], each level halving H and W."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock3d(
                in_features if i == 0 else _hourglass_width(block_expansion, max_features, i),
                _hourglass_width(block_expansion, max_features, i + 1),
            )
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: BxCinxDxHxW -> list of num_blocks+1 tensors, finest first."""
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    """3-D U-Net decoder with skip concatenation; ends with the encoder input concatenated and a
    conv3d 3 + BatchNorm3d + ReLU at width ``block_expansion + in_features``."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            mult = 1 if i == num_blocks - 1 else 2  # later levels also receive the skip
            blocks.append(
                UpBlock3d(
                    mult * _hourglass_width(block_expansion, max_features, i + 1),
                    _hourglass_width(block_expansion, max_features, i),
                )
            )
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, 3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: the encoder's list (finest first) -> Bx(block_expansion+in_features)xDxHxW."""
        out = feats[-1]
        for block, skip in zip(self.up_blocks, reversed(feats[:-1])):
            out = torch.cat([block(out), skip], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    """3-D U-Net. BxCinxDxHxW -> Bx(block_expansion+Cin)xDxHxW (H, W divisible by 2**num_blocks)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BxCinxDxHxW -> Bx(block_expansion+Cin)xDxHxW."""
        return self.decoder(self.encoder(x))


class SpectralNormConv2d(nn.Module):
    """Conv2d whose weight is ``weight_orig / sigma`` with sigma = u . (W v).

    W is ``weight_orig`` reshaped to (out, in*kh*kw); u (out) and v (in*kh*kw) are the stored
    buffers ``weight_u``/``weight_v``. No power iteration is ever run: this is the eval-mode
    behaviour of torch's spectral_norm, and the checkpoints' u, v are not exact singular
    vectors, so recomputing sigma would change the output. State-dict keys: ``bias`` (if any),
    ``weight_orig``, ``weight_u``, ``weight_v``. x: BxCinxHxW -> BxCoutxHxW.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.padding = padding
        # bias registered first so the key order matches torch's spectral_norm
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.weight_orig = nn.Parameter(torch.empty(cout, cin, kernel_size, kernel_size))
        fan = cin * kernel_size * kernel_size
        self.register_buffer("weight_u", torch.full((cout,), 1 / math.sqrt(cout)))
        self.register_buffer("weight_v", torch.full((fan,), 1 / math.sqrt(fan)))
        nn.init.kaiming_uniform_(self.weight_orig, a=math.sqrt(5))

    def normalized_weight(self) -> torch.Tensor:
        """weight_orig / (u . (W v)): CoutxCinxKxK."""
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.reshape(w.shape[0], -1), self.weight_v))
        return w / sigma

    def fold(self) -> None:
        """Store the normalised weight once (call after loading, in float32): sigma never
        changes in eval, so recomputing it each forward is waste. Not in the state dict."""
        with torch.no_grad():
            self.register_buffer("folded", self.normalized_weight().float().detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: BxCinxHxW -> BxCoutxHxW."""
        w = self.folded if hasattr(self, "folded") else self.normalized_weight()
        return F.conv2d(x, w, self.bias, padding=self.padding)


def fold_spectral_norms(module: nn.Module) -> None:
    """:meth:`SpectralNormConv2d.fold` on every spectral-norm conv (before any dtype cast)."""
    for m in module.modules():
        if isinstance(m, SpectralNormConv2d):
            if m.weight_orig.dtype != torch.float32:
                raise ValueError("fold_spectral_norms: fold the float32 weights, before the dtype cast")
            m.fold()


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d without affine, statistics in float32. Elementwise after the
    statistics, so a channels_last input stays channels_last (InstanceNorm2d converts it)."""
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=(2, 3), keepdim=True, correction=0)
    return ((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: InstanceNorm(x) * (1 + gamma(seg)) + beta(seg).

    x: BxCxHxW, seg: BxLxH'xW' (resized to HxW by nearest) -> BxCxHxW.
    """

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """x: BxCxHxW, seg: BxLxH'xW' -> BxCxHxW."""
        normalized = instance_norm(x)  # float32 statistics under half precision
        if seg.shape[2:] != x.shape[2:]:
            seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(seg)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """Residual block of two SPADE -> LeakyReLU(0.2) -> spectral-norm conv3x3 stages.

    The shortcut is SPADE -> spectral-norm 1x1 conv (no bias, no activation) when fin != fout,
    else identity. x: BxfinxHxW, seg: BxLxH'xW' -> BxfoutxHxW.
    """

    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmid = min(fin, fout)
        self.conv_0 = SpectralNormConv2d(fin, fmid, 3, padding=1)
        self.conv_1 = SpectralNormConv2d(fmid, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, 1, bias=False)
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(fmid, label_nc, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """x: BxfinxHxW, seg: BxLxH'xW' -> BxfoutxHxW."""
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx
