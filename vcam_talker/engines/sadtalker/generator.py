"""Dense motion network and the occlusion-aware SPADE generator (prefix ``generator.``).

The generator's work splits into a source-only part and a per-frame part:

- :meth:`OcclusionAwareSPADEGenerator.encode_source` (image -> 3-D feature volume) and
  :meth:`OcclusionAwareSPADEGenerator.compress_source` (the dense-motion network's compressed
  copy of it) depend on the source image only; compute them once per avatar and cache them.
- :meth:`OcclusionAwareSPADEGenerator.forward_from_features` does the rest for one driving pose.
- :meth:`OcclusionAwareSPADEGenerator.forward` chains both, like the reference's single call.

Attribute names reproduce the official state-dict keys, so no renaming table is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hparams import CommonParams, DenseMotionParams, GeneratorParams, SpadeDecoderParams
from .layers import (
    DownBlock2d,
    Hourglass,
    ResBlock3d,
    SameBlock2d,
    SPADEResnetBlock,
    grid_sample_3d,
    kp_to_gaussian,
    make_coordinate_grid,
)


class DenseMotionNetwork(nn.Module):
    """Predicts a dense 3-D backward warp (and an occlusion map) from two keypoint sets.

    With K = num_kp, C = compress, D x H x W the source feature volume (16x64x64 officially):
    sparse motions (identity + one per keypoint) warp the compressed source feature; with the
    driving-minus-source Gaussian heatmaps they feed a 3-D hourglass, whose output gives a
    softmax mask over the K+1 motions and, through a 2-D conv over (channels*D), the occlusion map.
    """

    def __init__(
        self,
        params: DenseMotionParams = DenseMotionParams(),
        num_kp: int = 15,
        feature_channel: int = 32,
        estimate_occlusion_map: bool = True,
    ) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.kp_variance = params.kp_variance
        self.mask_threshold = params.mask_threshold
        self.hourglass = Hourglass(
            params.block_expansion,
            in_features=(num_kp + 1) * (params.compress + 1),
            num_blocks=params.num_blocks,
            max_features=params.max_features,
        )
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, 7, padding=3)
        self.compress = nn.Conv3d(feature_channel, params.compress, 1)
        self.norm = nn.BatchNorm3d(params.compress)
        self.occlusion = (
            nn.Conv2d(self.hourglass.out_filters * params.reshape_depth, 1, 7, padding=3) if estimate_occlusion_map else None
        )

    def compress_source(self, feature_3d: torch.Tensor) -> torch.Tensor:
        """Source-only: feature_3d BxCfxDxHxW -> BxCxDxHxW, ReLU(BN(conv1x1(feature_3d)))."""
        return F.relu(self.norm(self.compress(feature_3d)))

    def sparse_motions(self, shape: torch.Size, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """Per-keypoint translations of the identity grid. kps: BxKx3 -> Bx(K+1)xDxHxWx3.

        Entry 0 is the identity (background); entry k is grid - kp_driving[k] + kp_source[k].
        """
        b, _, d, h, w = shape
        grid = make_coordinate_grid((d, h, w), kp_source.dtype, kp_source.device).view(1, 1, d, h, w, 3)
        shifted = grid - kp_driving.view(b, self.num_kp, 1, 1, 1, 3) + kp_source.view(b, self.num_kp, 1, 1, 1, 3)
        return torch.cat([grid.expand(b, 1, d, h, w, 3), shifted], dim=1)

    def heatmaps(self, shape: torch.Size, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """Gaussian(driving) - Gaussian(source), zero background first. kps: BxKx3 -> Bx(K+1)x1xDxHxW."""
        size = shape[2:]
        heat = kp_to_gaussian(kp_driving, size, self.kp_variance) - kp_to_gaussian(kp_source, size, self.kp_variance)
        zeros = heat.new_zeros(heat.shape[0], 1, *size)
        return torch.cat([zeros, heat], dim=1).unsqueeze(2)

    def forward_compressed(
        self, compressed: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-frame part. compressed: BxCxDxHxW, kps: BxKx3 -> dict:

        - ``mask``: Bx(K+1)xDxHxW softmax weights, before the small-value cut;
        - ``deformation``: BxDxHxWx3 sampling grid (x, y, z), after the cut;
        - ``occlusion_map``: Bx1xHxW in (0, 1) (when estimated).
        """
        b, c, d, h, w = compressed.shape
        k1 = self.num_kp + 1
        # under half precision the coordinate grids, Gaussians and warps stay float32: an 8-bit
        # mantissa (bfloat16) moves a grid point by up to 1/128 of the volume (no-ops in float32);
        # the engine keeps the cached volume float32, so .float() copies nothing per frame
        dt = self.hourglass.decoder.conv.weight.dtype
        kp_source, kp_driving = kp_source.float(), kp_driving.float()
        motions = self.sparse_motions(compressed.shape, kp_source, kp_driving)
        repeated = compressed.float().unsqueeze(1).expand(b, k1, c, d, h, w).reshape(b * k1, c, d, h, w)
        deformed = grid_sample_3d(repeated, motions.reshape(b * k1, d, h, w, 3)).view(b, k1, c, d, h, w)
        heat = self.heatmaps(compressed.shape, kp_source, kp_driving)
        # per-keypoint channels are [heatmap, compressed features], i.e. channel index k*(C+1)+c
        net_in = torch.cat([heat, deformed], dim=2).view(b, -1, d, h, w).to(dt)
        prediction = self.hourglass(net_in)

        # float32 under half precision: a softmax over K+1 logits loses the small weights first
        # the mask conv too: its logits feed that softmax
        mask = F.softmax(F.conv3d(prediction.float(), self.mask.weight.float(), self.mask.bias.float(), padding=3), dim=1)
        out = {"mask": mask}
        # the reference zeroes tiny weights without renormalising; this moves the output visibly
        cut = torch.where(mask < self.mask_threshold, torch.zeros_like(mask), mask)
        deformation = (motions.permute(0, 1, 5, 2, 3, 4) * cut.unsqueeze(2)).sum(dim=1)
        out["deformation"] = deformation.permute(0, 2, 3, 4, 1)
        if self.occlusion is not None:
            pb, pc, pd, ph, pw = prediction.shape
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction.view(pb, pc * pd, ph, pw)))
        return out

    def forward(self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> dict[str, torch.Tensor]:
        """feature_3d: BxCfxDxHxW, kps: BxKx3 -> dict as :meth:`forward_compressed`, plus ``compressed``."""
        compressed = self.compress_source(feature_3d)
        out = self.forward_compressed(compressed, kp_source, kp_driving)
        out["compressed"] = compressed
        return out


class SPADEDecoder(nn.Module):
    """SPADE image decoder; its input is also the segmentation map of every SPADE block.

    x: Bx(in)xHxW -> Bx3x4Hx4W in (0, 1) (official: Bx256x64x64 -> Bx3x256x256).
    fc conv3x3 to 2*in, ``num_middle_blocks`` SPADE res blocks at 2*in, then x2 nearest upsample +
    block to ``in``, x2 upsample + block to ``out_channels``, LeakyReLU(0.2), conv3x3 to RGB, sigmoid.
    """

    def __init__(self, params: SpadeDecoderParams = SpadeDecoderParams()) -> None:
        super().__init__()
        if params.norm != "spadespectralinstance":
            raise ValueError(f"SPADEDecoder: norm {params.norm!r} is not supported")
        ic, oc, label, hid = params.in_channels, params.out_channels, params.label_channels, params.spade_hidden
        self.num_middle_blocks = params.num_middle_blocks
        self.fc = nn.Conv2d(ic, 2 * ic, 3, padding=1)
        for i in range(params.num_middle_blocks):
            setattr(self, f"G_middle_{i}", SPADEResnetBlock(2 * ic, 2 * ic, label, hid))
        self.up_0 = SPADEResnetBlock(2 * ic, ic, label, hid)
        self.up_1 = SPADEResnetBlock(ic, oc, label, hid)
        self.conv_img = nn.Conv2d(oc, 3, 3, padding=1)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """feature: Bx(in)xHxW -> Bx3x4Hx4W in (0, 1)."""
        seg = feature
        x = self.fc(feature)
        for i in range(self.num_middle_blocks):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(F.interpolate(x, scale_factor=2, mode="nearest"), seg)
        x = self.up_1(F.interpolate(x, scale_factor=2, mode="nearest"), seg)
        # the output conv in float32: its 3 channels are the pixels (a float32 island under half)
        w = self.conv_img
        x = F.leaky_relu(x, 0.2).float()
        return torch.sigmoid(F.conv2d(x, w.weight.float(), w.bias.float() if w.bias is not None else None, padding=1))


class OcclusionAwareSPADEGenerator(nn.Module):
    """Renders the source face moved from ``kp_source`` to ``kp_driving``.

    source_image: Bx3xHxW in [0,1], kps: BxKx3 -> prediction Bx3xHxW in (0, 1) (official H = W = 256,
    feature volume Cf x D x H/4 x W/4 = 32x16x64x64).
    """

    def __init__(self, params: GeneratorParams = GeneratorParams(), common: CommonParams = CommonParams()) -> None:
        super().__init__()
        if common.estimate_jacobian:
            raise ValueError("OcclusionAwareSPADEGenerator: estimate_jacobian=True is not supported")
        self.dense_motion_network = DenseMotionNetwork(
            params.dense_motion_params,
            num_kp=common.num_kp,
            feature_channel=common.feature_channel,
            estimate_occlusion_map=params.estimate_occlusion_map,
        )
        be, mf = params.block_expansion, params.max_features
        self.first = SameBlock2d(common.image_channel, be, kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(min(mf, be * 2**i), min(mf, be * 2 ** (i + 1))) for i in range(params.num_down_blocks)
        )
        self.second = nn.Conv2d(min(mf, be * 2**params.num_down_blocks), mf, 1)
        self.reshape_channel = params.reshape_channel
        self.reshape_depth = params.reshape_depth
        self.resblocks_3d = nn.Sequential()
        for i in range(params.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(params.reshape_channel))
        out_features = be * 2**params.num_down_blocks
        self.third = SameBlock2d(mf, out_features, kernel_size=3, padding=1, lrelu=True)
        self.fourth = nn.Conv2d(out_features, out_features, 1)
        self.decoder = SPADEDecoder(params.decoder)

    def encode_source(self, source_image: torch.Tensor) -> torch.Tensor:
        """Source-only. source_image: Bx3xHxW in [0,1] -> feature_3d BxCfxDx(H/4)x(W/4).

        The 2-D feature's channel index is c*D + d when viewed as a volume.
        """
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        b, _, h, w = out.shape
        return self.resblocks_3d(out.view(b, self.reshape_channel, self.reshape_depth, h, w))

    def compress_source(self, feature_3d: torch.Tensor) -> torch.Tensor:
        """Source-only. feature_3d BxCfxDxHxW -> the dense-motion compressed feature BxCxDxHxW."""
        return self.dense_motion_network.compress_source(feature_3d)

    def decode(self, decoder_input: torch.Tensor) -> torch.Tensor:
        """decoder_input: Bx(in)xH'xW' (warped, occluded feature) -> Bx3x4H'x4W' in (0, 1)."""
        return self.decoder(decoder_input)

    def forward_from_features(
        self,
        feature_3d: torch.Tensor,
        kp_source: torch.Tensor,
        kp_driving: torch.Tensor,
        *,
        compressed: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-frame part. feature_3d: BxCfxDxH'xW' from :meth:`encode_source`, kps: BxKx3,
        compressed: optional cached :meth:`compress_source` result -> dict:

        - ``prediction``: Bx3xHxW in (0, 1);
        - ``mask``: Bx(K+1)xDxH'xW' (before the small-value cut), ``deformation``: BxDxH'xW'x3,
          ``occlusion_map``: Bx1xH'xW';
        - ``decoder_input``: Bx(in)xH'xW', the warped feature after third/fourth and occlusion.
        """
        if compressed is None:
            compressed = self.compress_source(feature_3d)
        out = self.dense_motion_network.forward_compressed(compressed, kp_source, kp_driving)
        # the warp grid and the feature volume have the same DxH'xW' by construction
        warped = grid_sample_3d(feature_3d.float(), out["deformation"]).to(self.fourth.weight.dtype)
        b, c, d, h, w = warped.shape
        x = self.fourth(self.third(warped.view(b, c * d, h, w)))
        occlusion = out.get("occlusion_map")
        if occlusion is not None:
            x = x * occlusion
        out["decoder_input"] = x
        out["prediction"] = self.decode(x)
        return out

    def forward(self, source_image: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> dict[str, torch.Tensor]:
        """source_image: Bx3xHxW in [0,1], kps: BxKx3 -> dict as :meth:`forward_from_features`."""
        return self.forward_from_features(self.encode_source(source_image), kp_source, kp_driving)
