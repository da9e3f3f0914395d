"""The prepared avatar and its on-disk cache."""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vcam_talker.safeio import private_dir

log = logging.getLogger(__name__)

#: bump when the prepared data's meaning changes; older cache files are rebuilt
CACHE_VERSION = 2  # 2: the meta lists every array (checked on load)


@dataclass
class Photo:
    """The photo an avatar was framed from, as loaded (EXIF orientation, RGB, ``max_side``).

    rgb: HxWx3 uint8; landmarks: 68x2 float32 in its pixels; framing: 2x3 float64 similarity
    mapping its pixels to the framed ``PreparedAvatar.image``.
    """

    rgb: np.ndarray
    landmarks: np.ndarray
    framing: np.ndarray


@dataclass
class PreparedAvatar:
    """Everything per-image an engine needs, computed once.

    image: HxWx3 uint8 RGB, the photo framed to the output size.
    landmarks: 68x2 float32 (x, y) in ``image`` pixels, iBUG-68 order.
    face_box: (x0, y0, x1, y1) in ``image`` pixels.
    data: engine-specific precomputed arrays.
    info: what preparation found (faces, detector, original size, notes, timings).
    photo: the original photo, set only while the engine's precompute runs (engines that
    work from the photo's own pixels read it there); never cached, None otherwise.
    """

    image: np.ndarray
    landmarks: np.ndarray
    face_box: tuple[float, float, float, float]
    engine: str
    sha256: str
    info: dict = field(default_factory=dict)
    data: dict[str, np.ndarray] = field(default_factory=dict)
    from_cache: bool = False
    photo: Photo | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def save(path: Path, av: PreparedAvatar) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a file. The
    folder is created 0700 and the file is 0600 (mkstemp): it holds the user's face.
    The meta lists every array's dtype and shape, which :func:`load` holds the file to."""
    private_dir(path.parent)
    arrays = {"image": av.image, "landmarks": av.landmarks}
    arrays.update({f"data.{k}": v for k, v in av.data.items()})
    meta = {"version": CACHE_VERSION, "engine": av.engine, "sha256": av.sha256,
            "face_box": list(av.face_box), "info": av.info,
            "arrays": {k: [np.asarray(v).dtype.str, list(np.shape(v))] for k, v in arrays.items()}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: what a cache file may hold, decompressed: a 4K frame and its rig are far below it
MAX_CACHE_BYTES = 256 << 20
MAX_META_BYTES = 1 << 20
MAX_SIDE = 4096


def load(path: Path) -> PreparedAvatar:
    """Read a cache file; raises ValueError when it is corrupt, from another version,
    not what its name says (engine, image hash), or its arrays differ from the meta in
    shape or dtype. Sizes are checked from the zip directory and the .npy headers before
    anything is decompressed, so a small file cannot expand to gigabytes."""
    try:
        _check_regular(path)
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            total = sum(i.file_size for i in infos.values())
            if total > MAX_CACHE_BYTES:
                raise ValueError(f"holds {total >> 20} MB, more than {MAX_CACHE_BYTES >> 20} MB")
            if "meta.npy" not in infos or infos["meta.npy"].file_size > MAX_META_BYTES:
                raise ValueError("no meta, or an oversized one")
            headers = {name[:-4]: _npy_header(zf, name) for name in infos if name.endswith(".npy")}
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
                got = meta.get("version") if isinstance(meta, dict) else None
                raise ValueError(f"cache version {got} != {CACHE_VERSION}")
            _check_meta(path, meta, headers)
            arrays = {k: z[k] for k in meta["arrays"]}
    except ValueError:
        raise
    except Exception as exc:  # zip, json and key errors all mean a damaged file
        raise ValueError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    for k, v in arrays.items():
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ValueError(f"{k} holds NaN or infinite values")
    h, w = arrays["image"].shape[:2]
    lm = arrays["landmarks"]
    if (lm < -w).any() or (lm > 2 * max(w, h)).any():
        raise ValueError("landmarks lie far outside the image")
    data = {k[5:]: v for k, v in arrays.items() if k.startswith("data.")}
    return PreparedAvatar(image=arrays["image"], landmarks=lm, face_box=tuple(float(v) for v in meta["face_box"]),
                          engine=meta["engine"], sha256=meta["sha256"], info=meta["info"], data=data,
                          from_cache=True)


def _check_regular(path: Path) -> None:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    if st.st_size > MAX_CACHE_BYTES:
        raise ValueError(f"file is {st.st_size >> 20} MB")


def _npy_header(zf: zipfile.ZipFile, name: str) -> tuple[str, tuple]:
    """(dtype, shape) from an .npy member's header, reading only the header."""
    with zf.open(name) as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(f)
    if dtype.hasobject:
        raise ValueError(f"{name} holds Python objects")
    return dtype.str, tuple(int(n) for n in shape)


def _check_meta(path: Path, meta: dict, headers: dict) -> None:
    engine, sha = meta.get("engine"), meta.get("sha256")
    if not isinstance(engine, str) or not isinstance(sha, str) or len(sha) != 64:
        raise ValueError("meta lacks the engine or the image hash")
    # the name is <sha256[:24]>-<params>-v<version>.npz under the engine's folder
    if path.parent.name != engine or not path.name.startswith(sha[:24]):
        raise ValueError(f"meta (engine {engine!r}, image {sha[:12]}…) does not match the file name")
    box = meta.get("face_box")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise ValueError("face_box is not four numbers")
    if not isinstance(meta.get("info"), dict):
        raise ValueError("info is not a mapping")
    want = meta.get("arrays")
    if not isinstance(want, dict) or {"image", "landmarks"} - want.keys():
        raise ValueError("meta does not list the arrays")
    if set(want) != set(headers) - {"meta"}:
        raise ValueError("the arrays differ from those the meta lists")
    for k, (dt, shape) in want.items():
        if headers[k] != (dt, tuple(shape)):
            raise ValueError(f"{k} is {headers[k][0]} {headers[k][1]}, the meta says {dt} {tuple(shape)}")
    dt, shape = headers["image"]
    if dt != "|u1" or len(shape) != 3 or shape[2] != 3 or not (16 <= shape[0] <= MAX_SIDE and 16 <= shape[1] <= MAX_SIDE):
        raise ValueError(f"image is {dt} {shape}, not an RGB frame")
    dt, shape = headers["landmarks"]
    if np.dtype(dt).kind != "f" or shape != (68, 2):
        raise ValueError(f"landmarks are {dt} {shape}, not 68 points")
