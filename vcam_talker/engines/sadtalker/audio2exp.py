"""The audio-to-expression net (ExpNet) and the Wav2Lip-style audio encoder it shares with audio2pose.

Audio encoder: 13 blocks of conv2d → BatchNorm → (+ input on residual blocks) → ReLU; the
residual add comes before the ReLU. Stage widths c0..c4 (official 32, 64, 128, 256, 512):

====  ================  ===================  ===============
 #     conv              stride / padding     map (H × W)
====  ================  ===================  ===============
 0     1→c0, 3×3         1 / 1                80 × 16
 1-2   c0→c0 residual    1 / 1
 3     c0→c1, 3×3        (3, 1) / 1           27 × 16
 4-5   c1→c1 residual    1 / 1
 6     c1→c2, 3×3        3 / 1                9 × 6
 7-8   c2→c2 residual    1 / 1
 9     c2→c3, 3×3        (3, 2) / 1           3 × 3
 10    c3→c3 residual    1 / 1
 11    c3→c4, 3×3        1 / 0                1 × 1
 12    c4→c4, 1×1        1 / 0                1 × 1
====  ================  ===================  ===============

ExpNet: ``mapping1`` (linear, c4 + 64 + 1 → 64) on [audio embedding ‖ reference expression ‖
blink ratio]. Every video frame is independent; the reference runs chunks of 10 frames.
State-dict keys match the official ``audio2exp.`` section without its prefix:
``audio_encoder.{0..12}.conv_block.{0,1}.*`` and ``mapping1.*``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .audio_hparams import Audio2ExpParams
from .checkpoint import load_strict, split_prefix


class AudioConvBlock(nn.Module):
    """conv2d → BN (→ + x) → ReLU. x: N×cin×H×W -> N×cout×H'×W'."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return torch.relu(out)


class Wav2LipAudioEncoder(nn.Sequential):
    """The 13-block mel encoder (table in the module docstring).

    channels: the five stage widths (official 32, 64, 128, 256, 512).
    forward: mels N×1×80×16 -> N×c4×1×1.
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256, 512)) -> None:
        c0, c1, c2, c3, c4 = channels
        super().__init__(
            AudioConvBlock(1, c0, 3, 1, 1),
            AudioConvBlock(c0, c0, 3, 1, 1, residual=True),
            AudioConvBlock(c0, c0, 3, 1, 1, residual=True),
            AudioConvBlock(c0, c1, 3, (3, 1), 1),
            AudioConvBlock(c1, c1, 3, 1, 1, residual=True),
            AudioConvBlock(c1, c1, 3, 1, 1, residual=True),
            AudioConvBlock(c1, c2, 3, 3, 1),
            AudioConvBlock(c2, c2, 3, 1, 1, residual=True),
            AudioConvBlock(c2, c2, 3, 1, 1, residual=True),
            AudioConvBlock(c2, c3, 3, (3, 2), 1),
            AudioConvBlock(c3, c3, 3, 1, 1, residual=True),
            AudioConvBlock(c3, c4, 3, 1, 0),
            AudioConvBlock(c4, c4, 1, 1, 0),
        )


class Audio2Exp(nn.Module):
    """Mel window + reference expression + blink ratio → 64 expression coefficients per frame.

    forward(mels N×1×80×16, ref_exp N×64, ratio N×1) -> N×64.
    """

    def __init__(self, params: Audio2ExpParams = Audio2ExpParams()) -> None:
        super().__init__()
        self.params = params.validate()
        self.audio_encoder = Wav2LipAudioEncoder(params.audio_encoder_channels)
        self.mapping1 = nn.Linear(params.mapping_in, params.exp_dim)

    def embed(self, mels: torch.Tensor) -> torch.Tensor:
        """Audio embedding. mels: N×1×80×16 -> N×c4."""
        return self.audio_encoder(mels).flatten(1)

    def head(self, embedding: torch.Tensor, ref_exp: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """mapping1 on the concatenation. embedding N×c4, ref_exp N×64, ratio N×1 -> N×64."""
        n = embedding.shape[0]
        return self.mapping1(torch.cat([embedding, ref_exp.reshape(n, -1), ratio.reshape(n, -1)], dim=1))

    def forward(self, mels: torch.Tensor, ref_exp: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(mels), ref_exp, ratio)

    def predict(
        self, indiv_mels: torch.Tensor, ref_exp: torch.Tensor, ratio: torch.Tensor, chunk: int | None = None
    ) -> torch.Tensor:
        """The reference's test loop over time, ``chunk`` frames at a time (default 10).

        indiv_mels: B×T×1×80×16, ref_exp: B×T×64, ratio: B×T×1 -> B×T×64.
        """
        chunk = chunk or self.params.test_chunk
        b, t = indiv_mels.shape[:2]
        outs = []
        for i in range(0, t, chunk):
            mels = indiv_mels[:, i : i + chunk]
            n = mels.shape[1]
            y = self(
                mels.reshape(b * n, *mels.shape[2:]),
                ref_exp[:, i : i + n].reshape(b * n, -1),
                ratio[:, i : i + n].reshape(b * n, -1),
            )
            outs.append(y.reshape(b, n, -1))
        return torch.cat(outs, dim=1)


def load_audio2exp(
    state: Mapping[str, torch.Tensor], params: Audio2ExpParams = Audio2ExpParams(), *, source: str, prefix: str = "audio2exp."
) -> Audio2Exp:
    """Build :class:`Audio2Exp` and fill it strictly from the ``prefix`` part of a combined state
    dict (the official ``audio2exp.`` section). Returns the net in eval mode.

    Raises CheckpointError naming ``source`` on any missing, unexpected or mis-shaped key.
    """
    net = Audio2Exp(params)
    load_strict(net, split_prefix(state, prefix), source=f"{source}:{prefix}")
    return net.eval()
