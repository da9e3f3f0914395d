"""Hyperparameters of our SadTalker re-implementation, as frozen dataclasses.

Every default is the official value: the ``model_params`` section of SadTalker's
``src/config/facerender.yaml``, plus the widths that the official python hard-codes
(SPADE decoder 256/64/256 with SPADE hidden width 128, the head-pose estimator's
256…2048 bottleneck stages, the dense-motion Gaussian variance). Those hard-coded
widths are fields here too, so a reduced-width parity fixture builds from the same code.

Layout:
- :class:`SadTalkerHParams` is the top level; its ``render`` part (:class:`RenderHParams`)
  is the face renderer (keypoint detector, head-pose estimator, generator, mapping nets).
  The audio side is meant to be added as further fields of the top level.
- ``SadTalkerHParams.from_yaml_dict`` reads either the official layout
  (``{'model_params': {...}}``, or that section itself) or the parity fixture's layout
  (``{'facerender': {...}, 'spade_decoder': {...}}``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True)
class CommonParams:
    """``common_params``: shared by the keypoint detector, head-pose estimator and generator."""

    num_kp: int = 15
    image_channel: int = 3
    #: channels of the generator's 3-D source feature (must equal generator.reshape_channel)
    feature_channel: int = 32
    #: official renderer runs without jacobians; we only support False
    estimate_jacobian: bool = False


@dataclass(frozen=True)
class KPDetectorParams:
    """``kp_detector_params``: the canonical keypoint detector (KPDetector)."""

    temperature: float = 0.1
    block_expansion: int = 32
    max_features: int = 1024
    #: the image is blurred and subsampled by this factor before the hourglass
    scale_factor: float = 0.25
    num_blocks: int = 5
    #: output channels of the 1x1 conv at the bottleneck, = 3-D channels * reshape_depth
    reshape_channel: int = 16384
    reshape_depth: int = 16


@dataclass(frozen=True)
class DenseMotionParams:
    """``generator_params.dense_motion_params``: the dense motion network."""

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    reshape_depth: int = 16
    #: channels the source feature is compressed to before warping
    compress: int = 4
    #: hard-coded in the official python
    kp_variance: float = 0.01
    #: softmax mask entries below this are zeroed (no renormalisation); hard-coded officially
    mask_threshold: float = 1e-3


@dataclass(frozen=True)
class SpadeDecoderParams:
    """The SPADE decoder; no yaml key officially (the parity fixture's ``spade_decoder`` section)."""

    #: decoder input channels (= generator block_expansion * 2**num_down_blocks)
    in_channels: int = 256
    #: channels of the last SPADE block, before the RGB conv
    out_channels: int = 64
    #: channels of the segmentation map fed to every SPADE (the decoder input itself)
    label_channels: int = 256
    #: width of each SPADE's shared conv
    spade_hidden: int = 128
    num_middle_blocks: int = 6
    #: only 'spadespectralinstance' (spectral-norm convs, InstanceNorm) is implemented
    norm: str = "spadespectralinstance"


@dataclass(frozen=True)
class GeneratorParams:
    """``generator_params``: the occlusion-aware SPADE generator."""

    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    reshape_channel: int = 32
    reshape_depth: int = 16
    num_resblocks: int = 6
    estimate_occlusion_map: bool = True
    dense_motion_params: DenseMotionParams = field(default_factory=DenseMotionParams)
    decoder: SpadeDecoderParams = field(default_factory=SpadeDecoderParams)


@dataclass(frozen=True)
class MappingParams:
    """``mapping_params``: MappingNet (3DMM coefficient window -> head pose bins, t, exp)."""

    #: 70 = exp 64 + angle 3 + trans 3 (crop/resize modes); 73 adds the crop (s, tx, ty) for full modes
    coeff_nc: int = 70
    descriptor_nc: int = 1024
    layer: int = 3
    num_kp: int = 15
    num_bins: int = 66


def _mapping_full_default() -> MappingParams:
    return MappingParams(coeff_nc=73)


@dataclass(frozen=True)
class RenderHParams:
    """Everything the face renderer needs. ``mapping_full`` is the coeff_nc-73 MappingNet of the
    'full'/'extfull' modes (official ``facerender_still.yaml``, file ``mapping_00109``)."""

    common: CommonParams = field(default_factory=CommonParams)
    kp_detector: KPDetectorParams = field(default_factory=KPDetectorParams)
    generator: GeneratorParams = field(default_factory=GeneratorParams)
    mapping: MappingParams = field(default_factory=MappingParams)
    mapping_full: MappingParams = field(default_factory=_mapping_full_default)

    def validate(self) -> RenderHParams:
        """Check the cross-section width constraints the official code silently assumes.

        Returns self; raises ValueError naming the fields that disagree.
        """
        c, kp, g = self.common, self.kp_detector, self.generator
        dm, dec = g.dense_motion_params, g.decoder
        problems = []
        if c.estimate_jacobian:
            problems.append("common_params.estimate_jacobian=True is not supported")
        if c.feature_channel != g.reshape_channel:
            problems.append(
                f"common_params.feature_channel ({c.feature_channel}) != generator_params.reshape_channel ({g.reshape_channel})"
            )
        if g.max_features != g.reshape_channel * g.reshape_depth:
            problems.append(
                f"generator_params.max_features ({g.max_features}) != reshape_channel*reshape_depth "
                f"({g.reshape_channel}*{g.reshape_depth})"
            )
        if g.reshape_depth != dm.reshape_depth:
            problems.append(
                f"generator_params.reshape_depth ({g.reshape_depth}) != dense_motion_params.reshape_depth ({dm.reshape_depth})"
            )
        bottleneck = min(kp.max_features, kp.block_expansion * 2**kp.num_blocks)
        if kp.reshape_channel != bottleneck * kp.reshape_depth:
            problems.append(
                f"kp_detector_params.reshape_channel ({kp.reshape_channel}) != {bottleneck}*reshape_depth ({kp.reshape_depth})"
            )
        gen_out = g.block_expansion * 2**g.num_down_blocks
        if dec.in_channels != gen_out or dec.label_channels != gen_out:
            problems.append(
                f"spade decoder in_channels/label_channels ({dec.in_channels}/{dec.label_channels}) != "
                f"generator block_expansion*2**num_down_blocks ({gen_out})"
            )
        if dec.norm != "spadespectralinstance":
            problems.append(f"spade decoder norm {dec.norm!r} is not supported (only 'spadespectralinstance')")
        for name, m in (("mapping_params", self.mapping), ("mapping_full_params", self.mapping_full)):
            if m.num_kp != c.num_kp:
                problems.append(f"{name}.num_kp ({m.num_kp}) != common_params.num_kp ({c.num_kp})")
        if problems:
            raise ValueError("inconsistent SadTalker render hparams: " + "; ".join(problems))
        return self

    @classmethod
    def from_model_params(
        cls, model_params: Mapping[str, Any], spade_decoder: Mapping[str, Any] | None = None
    ) -> RenderHParams:
        """Build from a ``model_params``-style dict (official facerender.yaml section, or the parity
        fixture's ``facerender`` section). Missing sections and keys keep the official default;
        unknown keys raise ValueError. ``discriminator_params`` (training only) and
        ``he_estimator_params`` (a net SadTalker inference never runs) are ignored.

        ``mapping_full_params`` is read when present; otherwise ``mapping_full`` is ``mapping_params``
        with coeff_nc 73. ``spade_decoder`` (or a ``spade_decoder`` entry inside ``model_params``)
        overrides the hard-coded decoder widths.
        """
        mp = dict(model_params)
        known = {
            "common_params",
            "kp_detector_params",
            "he_estimator_params",
            "generator_params",
            "mapping_params",
            "mapping_full_params",
            "discriminator_params",
            "spade_decoder",
        }
        _reject_unknown("model_params", mp, known)
        gen = dict(mp.get("generator_params") or {})
        dm = _build(DenseMotionParams, gen.pop("dense_motion_params", None) or {}, "dense_motion_params")
        dec_src = spade_decoder if spade_decoder is not None else mp.get("spade_decoder") or {}
        dec = _build(SpadeDecoderParams, dec_src, "spade_decoder")
        generator = _build(GeneratorParams, gen, "generator_params", dense_motion_params=dm, decoder=dec)
        mapping = _build(MappingParams, mp.get("mapping_params") or {}, "mapping_params")
        if "mapping_full_params" in mp:
            mapping_full = _build(MappingParams, mp["mapping_full_params"] or {}, "mapping_full_params")
        else:
            mapping_full = dataclasses.replace(mapping, coeff_nc=73)
        return cls(
            common=_build(CommonParams, mp.get("common_params") or {}, "common_params"),
            kp_detector=_build(KPDetectorParams, mp.get("kp_detector_params") or {}, "kp_detector_params"),
            generator=generator,
            mapping=mapping,
            mapping_full=mapping_full,
        ).validate()


@dataclass(frozen=True)
class SadTalkerHParams:
    """Top-level SadTalker hyperparameters. Further parts (audio side) go next to ``render``."""

    render: RenderHParams = field(default_factory=RenderHParams)

    @classmethod
    def from_yaml_dict(cls, doc: Mapping[str, Any]) -> SadTalkerHParams:
        """Build from a parsed yaml document.

        Accepted layouts: ``{'model_params': ...}`` (official facerender.yaml, full fixture),
        ``{'facerender': ..., 'spade_decoder': ...}`` (parity fixture), or a bare model_params dict.
        Other top-level sections are left to the parts that own them.
        """
        if "model_params" in doc:
            render = RenderHParams.from_model_params(doc["model_params"], doc.get("spade_decoder"))
        elif "facerender" in doc:
            render = RenderHParams.from_model_params(doc["facerender"], doc.get("spade_decoder"))
        else:
            render = RenderHParams.from_model_params(doc)
        return cls(render=render)


def _reject_unknown(section: str, values: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{section}: unknown keys {unknown} (known: {sorted(known)})")


def _build(cls: type[_T], values: Mapping[str, Any], section: str, **nested: Any) -> _T:
    """Instantiate dataclass ``cls`` from ``values``; lists become tuples where the default is a tuple."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    _reject_unknown(section, values, set(fields) - set(nested))
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = fields[name].default
        kwargs[name] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    kwargs.update(nested)
    return cls(**kwargs)
