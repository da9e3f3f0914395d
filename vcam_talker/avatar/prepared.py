"""The prepared avatar and its on-disk cache."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: bump when the prepared data's meaning changes; older cache files are rebuilt
CACHE_VERSION = 1


@dataclass
class PreparedAvatar:
    """Everything per-image an engine needs, computed once.

    image: HxWx3 uint8 RGB, the photo framed to the output size.
    landmarks: 68x2 float32 (x, y) in ``image`` pixels, iBUG-68 order.
    face_box: (x0, y0, x1, y1) in ``image`` pixels.
    data: engine-specific precomputed arrays.
    info: what preparation found (faces, detector, original size, notes, timings).
    """

    image: np.ndarray
    landmarks: np.ndarray
    face_box: tuple[float, float, float, float]
    engine: str
    sha256: str
    info: dict = field(default_factory=dict)
    data: dict[str, np.ndarray] = field(default_factory=dict)
    from_cache: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def save(path: Path, av: PreparedAvatar) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": CACHE_VERSION, "engine": av.engine, "sha256": av.sha256,
            "face_box": list(av.face_box), "info": av.info}
    arrays = {"image": av.image, "landmarks": av.landmarks,
              "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    arrays.update({f"data.{k}": v for k, v in av.data.items()})
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> PreparedAvatar:
    """Read a cache file; raises ValueError when it is corrupt or from another version."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.get("version") != CACHE_VERSION:
                raise ValueError(f"cache version {meta.get('version')} != {CACHE_VERSION}")
            data = {k[5:]: z[k] for k in z.files if k.startswith("data.")}
            return PreparedAvatar(
                image=z["image"], landmarks=z["landmarks"], face_box=tuple(meta["face_box"]),
                engine=meta["engine"], sha256=meta["sha256"], info=meta["info"], data=data, from_cache=True,
            )
    except ValueError:
        raise
    except Exception as exc:  # zip, json and key errors all mean a damaged file
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
