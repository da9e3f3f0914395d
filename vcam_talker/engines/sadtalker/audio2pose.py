"""The audio-to-pose CVAE (inference part) and the reference's pose smoothing.

Network (:class:`Audio2Pose`, keys as the official ``audio2pose.`` section without its prefix):

- ``audio_encoder.audio_encoder.*``: the Wav2Lip-style mel encoder of :mod:`.audio2exp`,
  one embedding (c4 = 512) per video frame;
- ``netG.decoder.*``: the CVAE decoder. Per 32-frame chunk: ``linear_audio`` (512→6) per frame,
  flattened to 192; latent ``z`` (64) plus ``classbias[style]`` (46×64); MLP on
  [ref pose 6 ‖ z 64 ‖ audio 192] = 262 → 128 → ReLU → 192 → sigmoid, viewed as 1×32×6;
  a ResUnet over that 32×6 map (sigmoid output); ``pose_linear`` (6→6) gives the motion 32×6.

The checkpoint's ``netG.encoder.*`` (the CVAE encoder) and ``netD_motion.*`` (a discriminator)
only serve training; we do not build them and the loader skips exactly those prefixes.

Which frames each decode reads and writes (the reference's chunking, the remainder chunk,
padding of short clips) is the coefficient timeline's business (:mod:`.timeline`);
:func:`smooth_pose` is the reference's Savitzky–Golay filter over the decoded poses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .audio2exp import Wav2LipAudioEncoder
from .audio_hparams import Audio2PoseParams
from .checkpoint import load_strict, split_prefix, training_only_prefixes

#: frames on each side of a semantic window (27 frames in all)
SEMANTIC_RADIUS = 13
#: Savitzky–Golay window and order of the reference's pose smoothing
SAVGOL_WINDOW = 13
SAVGOL_ORDER = 2


class ResidualConv(nn.Module):
    """Pre-activation residual unit: BN→ReLU→conv3(stride)→BN→ReLU→conv3, plus conv3(stride)→BN skip.

    x: N×cin×H×W -> N×cout×H/sh×W/sw.
    """

    def __init__(self, cin: int, cout: int, stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.conv_skip = nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x) + self.conv_skip(x)


class TimeUpsample(nn.Module):
    """Transposed conv doubling the time axis. x: N×c×H×W -> N×c×2H×W."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(channels, channels, kernel_size=(2, 1), stride=(2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)


class ResUnet(nn.Module):
    """U-Net of residual units over a 1-channel time × feature map, halving time three times.

    filters f0..f3 (official 32, 64, 128, 256). x: N×1×S×6 -> N×1×S×6 in (0, 1); S % 8 == 0.
    """

    def __init__(self, filters: Sequence[int] = (32, 64, 128, 256), channel: int = 1) -> None:
        super().__init__()
        f0, f1, f2, f3 = filters
        self.input_layer = nn.Sequential(
            nn.Conv2d(channel, f0, 3, padding=1), nn.BatchNorm2d(f0), nn.ReLU(), nn.Conv2d(f0, f0, 3, padding=1)
        )
        self.input_skip = nn.Sequential(nn.Conv2d(channel, f0, 3, padding=1))
        self.residual_conv_1 = ResidualConv(f0, f1, (2, 1))
        self.residual_conv_2 = ResidualConv(f1, f2, (2, 1))
        self.bridge = ResidualConv(f2, f3, (2, 1))
        self.upsample_1 = TimeUpsample(f3)
        self.up_residual_conv1 = ResidualConv(f3 + f2, f2, 1)
        self.upsample_2 = TimeUpsample(f2)
        self.up_residual_conv2 = ResidualConv(f2 + f1, f1, 1)
        self.upsample_3 = TimeUpsample(f1)
        self.up_residual_conv3 = ResidualConv(f1 + f0, f0, 1)
        self.output_layer = nn.Sequential(nn.Conv2d(f0, 1, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.input_layer(x) + self.input_skip(x)
        x2 = self.residual_conv_1(x1)
        x3 = self.residual_conv_2(x2)
        x4 = self.bridge(x3)
        x6 = self.up_residual_conv1(torch.cat([self.upsample_1(x4), x3], dim=1))
        x8 = self.up_residual_conv2(torch.cat([self.upsample_2(x6), x2], dim=1))
        x10 = self.up_residual_conv3(torch.cat([self.upsample_3(x8), x1], dim=1))
        return self.output_layer(x10)


class PoseDecoder(nn.Module):
    """The CVAE decoder: one 32-frame chunk of motion from audio, latent, style and ref pose.

    forward(z B×64, style B (int64), ref_pose B×6, audio_emb B×32×c4) -> motion B×32×6.
    """

    def __init__(self, params: Audio2PoseParams = Audio2PoseParams()) -> None:
        super().__init__()
        p = params.validate()
        self.seq_len = p.seq_len
        self.pose_dim = p.pose_dim
        self.resunet = ResUnet(p.resunet_filters)
        sizes = [p.decoder_in, *p.decoder_layer_sizes]
        layers: list[tuple[str, nn.Module]] = []
        for i, (cin, cout) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append((f"L{i}", nn.Linear(cin, cout)))
            last = i + 2 == len(sizes)
            layers.append(("sigmoid", nn.Sigmoid()) if last else (f"A{i}", nn.ReLU()))
        self.MLP = nn.Sequential(OrderedDict(layers))
        self.pose_linear = nn.Linear(p.pose_dim, p.pose_dim)
        self.linear_audio = nn.Linear(p.audio_emb_in_size, p.audio_emb_out_size)
        self.classbias = nn.Parameter(torch.zeros(p.num_classes, p.latent_size))

    def forward(
        self, z: torch.Tensor, style: torch.Tensor, ref_pose: torch.Tensor, audio_emb: torch.Tensor
    ) -> torch.Tensor:
        b = z.shape[0]
        audio = self.linear_audio(audio_emb).reshape(b, -1)
        x = self.MLP(torch.cat([ref_pose, z + self.classbias[style], audio], dim=-1))
        pose_map = self.resunet(x.reshape(b, 1, self.seq_len, -1))
        return self.pose_linear(pose_map.squeeze(1))


class PoseAudioEncoder(nn.Module):
    """Per-frame embeddings for a sequence of mel windows. B×T×1×80×16 -> B×T×c4.

    (The reference stacks frames time-major and reshapes back as if B were 1; we keep the
    batch order, which is identical for B = 1.)
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256, 512)) -> None:
        super().__init__()
        self.audio_encoder = Wav2LipAudioEncoder(channels)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        b, t = mels.shape[:2]
        return self.audio_encoder(mels.reshape(b * t, *mels.shape[2:])).reshape(b, t, -1)


class PoseCVAE(nn.Module):
    """Holds the decoder under the official name ``netG.decoder`` (the encoder is training-only)."""

    def __init__(self, params: Audio2PoseParams = Audio2PoseParams()) -> None:
        super().__init__()
        self.decoder = PoseDecoder(params)


class Audio2Pose(nn.Module):
    """``audio_encoder``: mel windows B×T×1×80×16 -> embeddings B×T×c4;
    ``netG.decoder(z B×64, style B, ref_pose B×6, emb B×seq_len×c4)`` -> motion B×seq_len×6."""

    def __init__(self, params: Audio2PoseParams = Audio2PoseParams()) -> None:
        super().__init__()
        self.params = params.validate()
        self.audio_encoder = PoseAudioEncoder(params.audio_encoder_channels)
        self.netG = PoseCVAE(params)


def smooth_pose(pose: np.ndarray | torch.Tensor, axis: int = -2) -> np.ndarray:
    """The reference's Savitzky–Golay smoothing over time (window 13, order 2, mode 'interp').

    pose: (..., T, 6) float -> same shape, float32. The input is rounded to float32 (the
    reference smooths a float32 copy of its torch tensor), filtered in float64 and rounded to
    float32 again: this reproduces the reference bit for bit, where filtering in float32 (what
    scipy 1.17 does for float32 input) is off by ~4e-7. Clips shorter than 13 frames use the
    largest odd window ≤ T; clips of fewer than 3 frames, where the reference would fail, come
    back unchanged.
    """
    x = np.asarray(pose.detach().cpu() if isinstance(pose, torch.Tensor) else pose, dtype=np.float32)
    t = x.shape[axis]
    window = SAVGOL_WINDOW if t >= SAVGOL_WINDOW else (t - 1) // 2 * 2 + 1
    if window <= SAVGOL_ORDER:
        return x.copy()
    try:
        from scipy.signal import savgol_filter
    except ImportError:  # the lent GPU machine's tree carries no scipy wheel (too big)
        savgol_filter = _savgol
    return savgol_filter(x.astype(np.float64), window, SAVGOL_ORDER, axis=axis).astype(np.float32)


def _savgol(x: np.ndarray, window: int, order: int, axis: int = -1) -> np.ndarray:
    """scipy.signal.savgol_filter(x, window, order, axis=axis) (mode 'interp'), in numpy: a
    least-squares polynomial over each centred window; the first and last ``window // 2``
    samples take the polynomial fitted to the first / last whole window. Same within float64
    rounding (tests/sadtalker/test_audio_parity.py)."""
    y = np.moveaxis(np.asarray(x, np.float64), axis, 0)
    t, half = y.shape[0], window // 2
    pos = np.arange(window, dtype=np.float64)
    vander = (pos[:, None] - half) ** np.arange(order + 1)
    centre = np.linalg.pinv(vander)[0]  # the value at the window's centre
    flat = y.reshape(t, -1)
    out = np.empty_like(flat)
    windows = np.lib.stride_tricks.sliding_window_view(flat, window, axis=0)  # (t-window+1, n, window)
    out[half : t - half] = windows @ centre
    edge = pos[:, None] ** np.arange(order + 1)
    fit = np.linalg.pinv(edge)
    out[:half] = edge[:half] @ (fit @ flat[:window])
    out[t - half :] = edge[window - half :] @ (fit @ flat[t - window :])
    return np.moveaxis(out.reshape(y.shape), 0, axis)


def load_audio2pose(
    state: Mapping[str, torch.Tensor],
    params: Audio2PoseParams = Audio2PoseParams(),
    *,
    source: str,
    prefix: str = "audio2pose.",
) -> Audio2Pose:
    """Build :class:`Audio2Pose` and fill it strictly from the ``prefix`` part of a combined state
    dict. The training-only ``netG.encoder.*`` and ``netD_motion.*`` keys are skipped by name;
    any other missing, unexpected or mis-shaped key raises CheckpointError naming ``source``.
    Returns the net in eval mode.
    """
    net = Audio2Pose(params)
    load_strict(
        net, split_prefix(state, prefix), source=f"{source}:{prefix}", ignore_prefixes=training_only_prefixes(prefix)
    )
    return net.eval()
