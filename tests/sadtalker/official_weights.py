"""Random weights at the official shapes, in the official file layout (shared by the
full-size sadtalker tests; the fixtures are in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vcam_talker import config as C
from vcam_talker.engines.sadtalker.files import MAPPING_FILES, combined_file

from .weight_rule import PARITY, rule_tensor


def sadtalker_config(**st) -> C.Config:
    """The default config with engine sadtalker and ``st`` set under engine.sadtalker."""
    d = C.to_dict(C.Config())
    d["engine"]["name"] = "sadtalker"
    d["engine"]["sadtalker"].update(st)
    return C.from_dict(d)


def write_official_weights(directory: Path) -> None:
    """Rule weights for every key of the real files (official_full_keys.json): the combined
    safetensors (training-only audio2pose parts included) and both MappingNet .pth.tar files
    with the state under 'mapping' next to another entry."""
    doc = json.loads((PARITY / "official_full_keys.json").read_text())
    sections = {k.split(" ")[0]: v for k, v in doc.items() if isinstance(v, dict)}
    combined = {k: torch.from_numpy(rule_tensor(k, shape)) for k, (shape, _) in sections[combined_file(256)].items()}
    save_file(combined, str(directory / combined_file(256)))
    del combined
    for name in MAPPING_FILES.values():
        state = {k: torch.from_numpy(rule_tensor("mapping." + k, shape)) for k, (shape, _) in sections[name].items()}
        save_padded({"mapping": state}, directory / name, manifest_size(name))


def manifest_size(name: str) -> int | None:
    """The real file's size from the weights manifest (the engine's presence check compares it)."""
    try:
        from vcam_talker import weights
    except ImportError:
        return None
    return next((e.size for e in weights.load_manifest().files if e.name == name), None)


def save_padded(obj: dict, path: Path, size: int | None) -> None:
    """torch.save ``obj`` plus filler so the file has exactly ``size`` bytes, as the real
    MappingNet files carry ~115 MB of other state next to 'mapping'. Records are 64-byte
    aligned, so the last few bytes go into the zip comment."""
    torch.save(obj, path)
    if size is None:
        return
    n = size - path.stat().st_size - 4096
    torch.save({**obj, "other_state": torch.zeros(max(n, 0), dtype=torch.uint8)}, path)
    data = bytearray(path.read_bytes())
    rest = size - len(data)
    assert 0 <= rest < 65536 and data[-22:-18] == b"PK\x05\x06", "unexpected torch.save layout"
    data[-2:] = rest.to_bytes(2, "little")  # end-of-central-directory comment length
    path.write_bytes(bytes(data) + b"#" * rest)
