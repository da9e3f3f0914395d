"""The audio-to-pose CVAE (inference part), its chunking rule, pose smoothing and semantic windows.

Network (:class:`Audio2Pose`, keys as the official ``audio2pose.`` section without its prefix):

- ``audio_encoder.audio_encoder.*``: the Wav2Lip-style mel encoder of :mod:`.audio2exp`,
  one embedding (c4 = 512) per video frame;
- ``netG.decoder.*``: the CVAE decoder. Per 32-frame chunk: ``linear_audio`` (512→6) per frame,
  flattened to 192; latent ``z`` (64) plus ``classbias[style]`` (46×64); MLP on
  [ref pose 6 ‖ z 64 ‖ audio 192] = 262 → 128 → ReLU → 192 → sigmoid, viewed as 1×32×6;
  a ResUnet over that 32×6 map (sigmoid output); ``pose_linear`` (6→6) gives the motion 32×6.

The checkpoint's ``netG.encoder.*`` (the CVAE encoder) and ``netD_motion.*`` (a discriminator)
only serve training; we do not build them and the loader skips exactly those prefixes.

Chunking (:func:`plan_pose_chunks`): frame 0 is the reference frame, with zero motion. Frames
1..T-1 go in chunks of 32 with one latent each; a remainder of r frames re-decodes the *last*
32 frames (front-padded with the first embedding when fewer exist) with its own latent and
keeps only its last r rows. Every frame 1..T-1 is written by exactly one chunk, so the chunks
can be decoded one at a time as audio arrives and concatenated.

After the nets, :func:`smooth_pose` applies the reference's Savitzky–Golay filter and
:func:`semantic_windows` builds the 27-frame windows that drive the renderer's mapping net.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import savgol_filter
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


@dataclass(frozen=True)
class PoseChunk:
    """One CVAE decode: the mel windows it reads and the frames it writes.

    - ``mel_start:mel_stop`` index the clip's per-frame mel windows (length ≤ seq_len; shorter
      only when the clip has fewer than seq_len frames after the reference frame);
    - ``pad``: leading copies of the first embedding that bring the input to seq_len;
    - ``keep``: the decoder's last ``keep`` output rows are frames ``out_start:out_start+keep``.
    """

    mel_start: int
    mel_stop: int
    pad: int
    out_start: int
    keep: int


def plan_pose_chunks(num_frames: int, seq_len: int = 32) -> list[PoseChunk]:
    """The reference's chunking of frames 1..num_frames-1 (frame 0 is the reference pose).

    num_frames T >= 1 -> ⌈(T-1)/seq_len⌉ chunks: whole chunks first, then the remainder chunk,
    which re-reads the last seq_len frames. The chunks write frames 1..T-1 exactly once, in order.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    n = num_frames - 1
    chunks = [PoseChunk(1 + k * seq_len, 1 + (k + 1) * seq_len, 0, 1 + k * seq_len, seq_len) for k in range(n // seq_len)]
    rem = n % seq_len
    if rem:
        start = max(1, num_frames - seq_len)
        chunks.append(PoseChunk(start, num_frames, seq_len - (num_frames - start), num_frames - rem, rem))
    return chunks


class Audio2Pose(nn.Module):
    """Mel windows + reference pose + style + latents → head pose per frame.

    ``predict(indiv_mels B×T×1×80×16, ref_pose B×6, style B, z)`` returns a dict with
    ``pose_motion_pred`` B×T×6 (row 0 zero), ``pose_pred`` B×T×6 (ref + motion) and
    ``audio_emb`` (list of B×seq_len×c4, one per chunk).
    """

    def __init__(self, params: Audio2PoseParams = Audio2PoseParams()) -> None:
        super().__init__()
        self.params = params.validate()
        self.audio_encoder = PoseAudioEncoder(params.audio_encoder_channels)
        self.netG = PoseCVAE(params)

    def chunk_embedding(self, indiv_mels: torch.Tensor, chunk: PoseChunk) -> torch.Tensor:
        """Encoder input for one chunk. indiv_mels: B×T×1×80×16 -> B×seq_len×c4."""
        emb = self.audio_encoder(indiv_mels[:, chunk.mel_start : chunk.mel_stop])
        if chunk.pad:
            emb = torch.cat([emb[:, :1].expand(-1, chunk.pad, -1), emb], dim=1)
        return emb

    def decode_chunk(
        self, audio_emb: torch.Tensor, chunk: PoseChunk, ref_pose: torch.Tensor, style: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """Motion rows written by one chunk. audio_emb B×seq_len×c4, z B×64 -> B×keep×6."""
        motion = self.netG.decoder(z, style, ref_pose, audio_emb)
        return motion[:, motion.shape[1] - chunk.keep :]

    def predict(
        self,
        indiv_mels: torch.Tensor,
        ref_pose: torch.Tensor,
        style: torch.Tensor | int,
        z: torch.Tensor | Sequence[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Whole-clip inference as the reference's test path.

        indiv_mels: B×T×1×80×16; ref_pose: B×6 (angle 3 ‖ trans 3 of the source);
        style: int or B int64 class ids in [0, num_classes);
        z: one B×64 latent per chunk (n_chunks×B×64 or a list); None draws them with
        ``torch.randn(B, 64)`` (from ``generator`` when given), one per chunk in chunk order,
        which is the reference's sequence of draws: the same seed gives the same latents.
        """
        b, t = indiv_mels.shape[:2]
        if not isinstance(style, torch.Tensor):
            style = torch.full((b,), int(style), dtype=torch.long, device=indiv_mels.device)
        chunks = plan_pose_chunks(t, self.params.seq_len)
        if z is not None and len(z) != len(chunks):
            raise ValueError(f"{len(chunks)} pose chunks for {t} frames, but {len(z)} latents given")
        rows = [torch.zeros(b, 1, self.params.pose_dim, dtype=ref_pose.dtype, device=ref_pose.device)]
        embs = []
        for k, chunk in enumerate(chunks):
            zk = z[k] if z is not None else torch.randn(
                b, self.params.latent_size, generator=generator, device=indiv_mels.device
            )
            emb = self.chunk_embedding(indiv_mels, chunk)
            embs.append(emb)
            rows.append(self.decode_chunk(emb, chunk, ref_pose, style, zk.reshape(b, -1)))
        motion = torch.cat(rows, dim=1)
        return {"pose_motion_pred": motion, "pose_pred": ref_pose[:, None] + motion, "audio_emb": embs}


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
    return savgol_filter(x.astype(np.float64), window, SAVGOL_ORDER, axis=axis).astype(np.float32)


def window_rows(frame: int | np.ndarray, num_frames: int, radius: int = SEMANTIC_RADIUS) -> np.ndarray:
    """Coefficient rows of frame ``frame``'s window: clamp(i-radius .. i+radius) to [0, T-1].

    Scalar -> (2r+1,); array (N,) -> (N, 2r+1).
    """
    i = np.asarray(frame)[..., None]
    return np.clip(i + np.arange(-radius, radius + 1), 0, num_frames - 1)


def semantic_windows(coeffs: np.ndarray | torch.Tensor, radius: int = SEMANTIC_RADIUS) -> np.ndarray | torch.Tensor:
    """The renderer's driving windows for every frame. coeffs: T×C -> T×C×(2r+1) (27 officially).

    Works on numpy arrays and torch tensors alike (gather only).
    """
    idx = window_rows(np.arange(coeffs.shape[0]), coeffs.shape[0], radius)
    if isinstance(coeffs, torch.Tensor):
        return coeffs[torch.from_numpy(idx).to(coeffs.device)].transpose(1, 2)
    return np.ascontiguousarray(coeffs[idx].transpose(0, 2, 1))


def semantic_window(coeffs: np.ndarray, frame: int, radius: int = SEMANTIC_RADIUS) -> np.ndarray:
    """One frame's window from the coefficients known so far. coeffs: T×C -> C×(2r+1).

    For a streaming caller: the window is final once ``coeffs`` has frame+radius+1 rows (or
    holds the whole clip); before that the clamp repeats the last known row.
    """
    return np.ascontiguousarray(coeffs[window_rows(frame, coeffs.shape[0], radius)].T)


def source_semantics(coeff: np.ndarray | torch.Tensor, radius: int = SEMANTIC_RADIUS) -> np.ndarray | torch.Tensor:
    """The source's window: its one coefficient vector repeated. coeff: C -> C×(2r+1)."""
    width = 2 * radius + 1
    if isinstance(coeff, torch.Tensor):
        return coeff.reshape(-1, 1).expand(-1, width).contiguous()
    return np.repeat(np.asarray(coeff).reshape(-1, 1), width, axis=1)


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
