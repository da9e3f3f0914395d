"""Hyperparameters of the audio side of our SadTalker re-implementation, as frozen dataclasses.

Every default is the official value:

- :class:`MelParams`: the spectrogram recipe (SadTalker's ``src/utils/hparams.py``) plus the
  25 fps windowing of its data loader;
- :class:`Audio2ExpParams`: the expression net. The official python hard-codes its widths
  (Wav2Lip-style encoder 32…512, ``mapping1`` 577→64, chunks of 10 frames) and reads nothing
  from ``auido2exp.yaml`` for it, so the widths are fields here;
- :class:`Audio2PoseParams`: the pose CVAE, ``auido2pose.yaml`` → ``MODEL.CVAE`` and
  ``DATASET.NUM_CLASSES``, plus the hard-coded encoder and ResUnet widths.

:meth:`AudioHParams.from_yaml_dict` reads the layouts we meet:

- the full-size fixture: ``{'audio2pose_cfg': {'SEQ_LEN': 32, ...}, ...}``;
- the reduced parity fixture: ``{'audio': {...}, 'audio2exp': {...}, 'audio2pose': {...}}``;
- the official ``auido2pose.yaml``: ``{'DATASET': {...}, 'MODEL': {'CVAE': {...}}}``.

Sections that belong to other parts (the renderer's ``model_params`` ...) are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: the Wav2Lip audio encoder's five stage widths, hard-coded in the official python
OFFICIAL_AUDIO_ENCODER_CHANNELS = (32, 64, 128, 256, 512)
#: the pose decoder ResUnet's filters, hard-coded default of the official class
OFFICIAL_RESUNET_FILTERS = (32, 64, 128, 256)


@dataclass(frozen=True)
class MelParams:
    """The reference's log-mel recipe and its per-video-frame windows."""

    sample_rate: int = 16000
    n_fft: int = 800
    hop_size: int = 200
    win_size: int = 800
    preemphasis: float = 0.97
    num_mels: int = 80
    fmin: float = 55.0
    fmax: float = 7600.0
    min_level_db: float = -100.0
    ref_level_db: float = 20.0
    max_abs_value: float = 4.0
    symmetric_mels: bool = True
    allow_clipping_in_normalization: bool = True
    fps: int = 25
    #: mel frames per video-frame window (the SyncNet step size)
    mel_window: int = 16

    @property
    def samples_per_frame(self) -> float:
        """Audio samples per video frame (640 at 16 kHz, 25 fps)."""
        return self.sample_rate / self.fps

    @property
    def mel_frames_per_second(self) -> float:
        """80 at the official settings: the 80 in the window start ``int(80 * (i - 2) / 25)``."""
        return self.sample_rate / self.hop_size


@dataclass(frozen=True)
class Audio2ExpParams:
    """The audio-to-expression net (official class ``SimpleWrapperV2``)."""

    #: widths of the five encoder stages; the last is the audio embedding size
    audio_encoder_channels: tuple[int, ...] = OFFICIAL_AUDIO_ENCODER_CHANNELS
    #: expression coefficients in and out (``DATASET.EXP_DIM``)
    exp_dim: int = 64
    #: frames per forward pass in the official test loop
    test_chunk: int = 10

    @property
    def mapping_in(self) -> int:
        """Input width of ``mapping1``: audio embedding ‖ ref expression ‖ blink ratio (577)."""
        return self.audio_encoder_channels[-1] + self.exp_dim + 1

    def validate(self) -> Audio2ExpParams:
        if len(self.audio_encoder_channels) != 5:
            raise ValueError(f"audio2exp audio_encoder_channels needs 5 widths, got {self.audio_encoder_channels}")
        return self


@dataclass(frozen=True)
class Audio2PoseParams:
    """The audio-to-pose CVAE (official ``Audio2Pose``; only the decoder runs at inference)."""

    seq_len: int = 32
    latent_size: int = 64
    audio_emb_in_size: int = 512
    audio_emb_out_size: int = 6
    #: CVAE encoder MLP sizes: training only, kept as given. The official encoder adds the
    #: decoder input width (262) to the first entry in place, so a config dumped after
    #: building the official net (the full-size fixture's) shows [454, 128].
    encoder_layer_sizes: tuple[int, ...] = (192, 128)
    decoder_layer_sizes: tuple[int, ...] = (128, 192)
    num_classes: int = 46
    audio_encoder_channels: tuple[int, ...] = OFFICIAL_AUDIO_ENCODER_CHANNELS
    resunet_filters: tuple[int, ...] = OFFICIAL_RESUNET_FILTERS
    #: angle 3 + translation 3; hard-coded officially
    pose_dim: int = 6

    def validate(self) -> Audio2PoseParams:
        """Check the width constraints the official code silently assumes; returns self."""
        problems = []
        if self.audio_emb_in_size != self.audio_encoder_channels[-1]:
            problems.append(
                f"AUDIO_EMB_IN_SIZE ({self.audio_emb_in_size}) != last audio encoder width "
                f"({self.audio_encoder_channels[-1]})"
            )
        if self.decoder_layer_sizes[-1] != self.seq_len * self.pose_dim:
            problems.append(
                f"DECODER_LAYER_SIZES[-1] ({self.decoder_layer_sizes[-1]}) != SEQ_LEN*{self.pose_dim} "
                f"({self.seq_len * self.pose_dim})"
            )
        # three stride-(2,1) stages in the ResUnet
        if self.seq_len % 8:
            problems.append(f"SEQ_LEN ({self.seq_len}) must be divisible by 8")
        if len(self.resunet_filters) != 4:
            problems.append(f"resunet_filters needs 4 widths, got {self.resunet_filters}")
        if len(self.audio_encoder_channels) != 5:
            problems.append(f"audio_encoder_channels needs 5 widths, got {self.audio_encoder_channels}")
        if problems:
            raise ValueError("inconsistent audio2pose hparams: " + "; ".join(problems))
        return self

    @property
    def decoder_in(self) -> int:
        """Input width of the decoder MLP: ref pose ‖ latent ‖ per-frame audio (262)."""
        return self.pose_dim + self.latent_size + self.seq_len * self.audio_emb_out_size


# yaml key (official upper case) -> field
_A2P_YAML = {
    "SEQ_LEN": "seq_len",
    "LATENT_SIZE": "latent_size",
    "AUDIO_EMB_IN_SIZE": "audio_emb_in_size",
    "AUDIO_EMB_OUT_SIZE": "audio_emb_out_size",
    "ENCODER_LAYER_SIZES": "encoder_layer_sizes",
    "DECODER_LAYER_SIZES": "decoder_layer_sizes",
    "NUM_CLASSES": "num_classes",
    "audio_encoder_channels": "audio_encoder_channels",
    "resunet_filters": "resunet_filters",
}

# descriptive entries of the parity fixture's ``audio`` section: value we implement
_MEL_FIXED = {
    "window": "hann",
    "center": True,
    "pad_mode": "constant",
    "mel_scale": "slaney",
}
_MEL_DERIVED = {"samples_per_frame", "mel_window_start"}


@dataclass(frozen=True)
class AudioHParams:
    """Everything the audio side needs: mel front end, audio2exp, audio2pose."""

    mel: MelParams = field(default_factory=MelParams)
    audio2exp: Audio2ExpParams = field(default_factory=Audio2ExpParams)
    audio2pose: Audio2PoseParams = field(default_factory=Audio2PoseParams)

    @classmethod
    def from_yaml_dict(cls, doc: Mapping[str, Any]) -> AudioHParams:
        """Build from a parsed yaml document (layouts in the module docstring).

        Missing keys keep the official default; unknown keys inside a section we read raise
        ValueError; a descriptive mel entry that names a recipe we do not implement raises too.
        """
        mel = _mel_from(doc.get("audio") or {})
        a2e = _a2e_from(doc.get("audio2exp") or {})
        if "audio2pose_cfg" in doc:
            a2p = _a2p_from(doc["audio2pose_cfg"] or {}, "audio2pose_cfg")
        elif "audio2pose" in doc:
            a2p = _a2p_from(doc["audio2pose"] or {}, "audio2pose")
        elif "MODEL" in doc:
            if "FRAMEWORK" in (doc.get("MODEL") or {}):
                # auido2exp.yaml also has a MODEL.CVAE section, but no official net reads it
                raise ValueError("this looks like auido2exp.yaml; pass auido2pose.yaml for the pose CVAE")
            cvae = dict((doc.get("MODEL") or {}).get("CVAE") or {})
            if "NUM_CLASSES" in (doc.get("DATASET") or {}):
                cvae["NUM_CLASSES"] = doc["DATASET"]["NUM_CLASSES"]
            a2p = _a2p_from(cvae, "MODEL.CVAE")
        else:
            a2p = Audio2PoseParams()
        return cls(mel=mel, audio2exp=a2e.validate(), audio2pose=a2p.validate())


def _tupled(value: Any, default: Any) -> Any:
    return tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value


def _mel_from(section: Mapping[str, Any]) -> MelParams:
    names = {f.name: f for f in dataclasses.fields(MelParams)}
    kwargs = {}
    for key, value in section.items():
        if key in names:
            kwargs[key] = value
        elif key in _MEL_FIXED:
            want = _MEL_FIXED[key]
            ok = str(value).lower().startswith(want) if isinstance(want, str) else value == want
            if not ok:
                raise ValueError(f"audio.{key}: {value!r} is not supported (only {want!r})")
        elif key not in _MEL_DERIVED:
            raise ValueError(f"audio: unknown key {key!r} (known: {sorted(set(names) | set(_MEL_FIXED) | _MEL_DERIVED)})")
    mel = MelParams(**kwargs)
    spf = section.get("samples_per_frame")
    if spf is not None and spf != mel.samples_per_frame:
        raise ValueError(f"audio.samples_per_frame ({spf}) != sample_rate/fps ({mel.samples_per_frame})")
    return mel


def _a2e_from(section: Mapping[str, Any]) -> Audio2ExpParams:
    known = {"audio_encoder_channels", "mapping1", "test_chunk", "exp_dim"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"audio2exp: unknown keys {unknown} (known: {sorted(known)})")
    kwargs: dict[str, Any] = {}
    if "audio_encoder_channels" in section:
        kwargs["audio_encoder_channels"] = tuple(section["audio_encoder_channels"])
    if "test_chunk" in section:
        kwargs["test_chunk"] = int(section["test_chunk"])
    mapping1 = section.get("mapping1") or {}
    if "out" in mapping1:
        kwargs["exp_dim"] = int(mapping1["out"])
    if "exp_dim" in section:
        kwargs["exp_dim"] = int(section["exp_dim"])
    params = Audio2ExpParams(**kwargs)
    if "in" in mapping1 and int(mapping1["in"]) != params.mapping_in:
        raise ValueError(f"audio2exp.mapping1.in ({mapping1['in']}) != embedding+exp+1 ({params.mapping_in})")
    return params


def _a2p_from(section: Mapping[str, Any], where: str) -> Audio2PoseParams:
    defaults = {f.name: f.default for f in dataclasses.fields(Audio2PoseParams)}
    kwargs = {}
    for key, value in section.items():
        name = _A2P_YAML.get(key)
        if name is None:
            raise ValueError(f"{where}: unknown key {key!r} (known: {sorted(_A2P_YAML)})")
        kwargs[name] = _tupled(value, defaults[name])
    return Audio2PoseParams(**kwargs)
