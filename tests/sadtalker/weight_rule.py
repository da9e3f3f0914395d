"""The fixture's weight rule (../shared/fixtures/sadtalker/README.md, "The weight rule")."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

_TREE = Path(__file__).resolve().parents[2]
# the checkout's ../shared; else shared/fixtures inside the tree (the GPU check's copied tree
# holds only the subset that check reads: scripts/prepare_device_tree.sh)
FIXTURES = next((d for d in (_TREE.parent / "shared" / "fixtures", _TREE / "shared" / "fixtures") if d.is_dir()),
                _TREE.parent / "shared" / "fixtures")
FULL = FIXTURES / "sadtalker"
PARITY = FIXTURES / "sadtalker_parity"


def rule_tensor(key: str, shape: list[int]) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    last = key.rsplit(".", 1)[-1]
    s = tuple(shape)
    if last == "num_batches_tracked":
        return np.zeros(s, dtype=np.int64)
    if last == "running_mean":
        a = rng.standard_normal(s) * 0.1
    elif last == "running_var":
        a = rng.uniform(0.75, 1.25, s)
    elif last in ("weight_u", "weight_v"):
        v = rng.standard_normal(s)
        a = v / np.linalg.norm(v)
    elif len(s) > 1:
        scale = 0.02 if "conv_img" in key else 0.5 if key.startswith("generator.decoder.") else 1.0
        a = rng.standard_normal(s) * scale / np.sqrt(np.prod(s[1:]))
    elif last == "weight":
        a = 1 + 0.1 * rng.standard_normal(s)
    else:
        a = 0.1 * rng.standard_normal(s)
    return np.ascontiguousarray(a, dtype=np.float32)


def rule_weights(prefixes: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """All fixture weights by the rule, optionally only keys starting with ``prefixes``."""
    keys = json.loads((FULL / "keys.json").read_text())
    return {
        k: rule_tensor(k, v["shape"])
        for k, v in keys.items()
        if prefixes is None or k.startswith(prefixes)
    }


def rule_sha256(weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(np.ascontiguousarray(weights[k]).astype(weights[k].dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


FACE_RECON = FIXTURES / "sadtalker_long" / "face_recon"


def rule_weights_for(shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """The rule applied to any key -> shape listing (e.g. the face_3drecon part of official_full_keys.json)."""
    return {k: rule_tensor(k, list(s)) for k, s in shapes.items()}


def rule_key_sha256(weights: dict[str, np.ndarray]) -> dict[str, str]:
    """Per key, the sha256 of the tensor's raw little-endian bytes alone (sha256sum-style files)."""
    return {
        k: hashlib.sha256(np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")).tobytes()).hexdigest()
        for k, v in weights.items()
    }
