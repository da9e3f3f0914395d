"""Reading SadTalker checkpoints safely and loading them strictly into our modules.

Layouts read:
- the combined ``SadTalker_V0.0.2_{256,512}.safetensors``: prefixes ``kp_extractor.``,
  ``generator.``, ``audio2exp.``, ``audio2pose.`` and ``face_3drecon.``;
- the MappingNet files ``mapping_00229-model.pth.tar`` / ``mapping_00109-model.pth.tar``:
  a dict whose ``'mapping'`` entry is the state dict, without prefix;
- the older per-module ``.pth`` / ``.pth.tar`` files: a dict whose named entry
  (``'model'``, ``'he_estimator'``, ``'net_recon'``, ...) is the state dict.

Pickled files are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from vcam_talker.errors import CheckpointError

#: keys of the real combined file that only training uses; skipped by name, nothing else is
TRAINING_ONLY_PREFIXES = ("audio2pose.netG.encoder.", "audio2pose.netD_motion.")

_MAX_LISTED = 8


def training_only_prefixes(prefix: str) -> tuple[str, ...]:
    """The entries of TRAINING_ONLY_PREFIXES under ``prefix``, relative to it.

    For ``load_strict(..., ignore_prefixes=...)`` after ``split_prefix(state, prefix)``:
    ``training_only_prefixes('audio2pose.')`` is ``('netG.encoder.', 'netD_motion.')``.
    """
    return tuple(p[len(prefix):] for p in TRAINING_ONLY_PREFIXES if p.startswith(prefix))


def _fail(path: os.PathLike | str, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{Path(path).name}: {reason} (path {path}); "
        "re-download it with `vcam-talker weights download` and check it with `vcam-talker weights verify`"
    )


def sha256_file(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: os.PathLike | str, entry: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict on the CPU.

    path: ``.safetensors`` or a pickled ``.pth``/``.pth.tar``/``.pt`` file.
    entry: for pickled dict-of-dicts files, the entry that holds the state
        (``'mapping'`` for the MappingNet files); None means the file is the state.
    Raises CheckpointError naming the file when it is missing, truncated or corrupt.
    """
    p = Path(path)
    if not p.is_file():
        raise _fail(p, "file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(p), device="cpu")
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, zipfile and unpickler errors all mean "corrupt"
        raise _fail(p, f"corrupt or truncated checkpoint: {type(exc).__name__}: {exc}") from None
    if entry is not None:
        if not isinstance(state, Mapping) or entry not in state:
            keys = list(state)[:_MAX_LISTED] if isinstance(state, Mapping) else type(state).__name__
            raise _fail(p, f"has no {entry!r} entry (found {keys})")
        state = state[entry]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _fail(p, "is not a state dict of tensors")
    return dict(state)


def split_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries whose key starts exactly with ``prefix``, with the prefix removed.

    Prefix matching is exact: ``'mapping.'`` does not take ``'mapping_full.'`` keys.
    """
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_strict(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Copy ``state`` into ``module``; any missing, unexpected or mis-shaped key is an error.

    source: names the file and prefix in the error, e.g. ``'SadTalker_V0.0.2_256.safetensors:generator.'``.
    ignore_prefixes: keys (relative to ``state``) skipped by name, e.g. training-only parts.
    """
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = module.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        raise CheckpointError(f"{source}: checkpoint does not match {type(module).__name__}; " + "; ".join(parts))
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own if own[k].shape != state[k].shape]
    if bad:
        raise CheckpointError(f"{source}: wrong shapes for {type(module).__name__}: {_listing(bad)}")
    module.load_state_dict(state, strict=True)
