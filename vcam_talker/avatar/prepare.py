"""prepare_avatar: photo → framed image + landmarks + engine precompute, through the cache."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vcam_talker.avatar import prepared
from vcam_talker.avatar.image import MAX_IMAGE_BYTES, load_image
from vcam_talker.avatar.landmarks import Face, LandmarkDetector
from vcam_talker.avatar.prepared import Photo, PreparedAvatar
from vcam_talker.config import Config
from vcam_talker.errors import AvatarError
from vcam_talker.lazycv2 import cv2
from vcam_talker.safeio import read_capped

log = logging.getLogger(__name__)

Precompute = Callable[[PreparedAvatar], dict[str, np.ndarray]]


def framing_transform(face: Face, size: tuple[int, int], face_scale: float,
                      image_size: tuple[int, int]) -> np.ndarray:
    """2x3 similarity (rotation levels the eyes) mapping image pixels to the output frame,
    with the face box ``face_scale`` of the frame height and the face centre at 45% of it.

    When the image is too small for that framing, the face is shown smaller rather than
    padding with invented borders.
    """
    W, H = size
    lm = face.landmarks
    left_eye, right_eye = lm[36:42].mean(0), lm[42:48].mean(0)
    dx, dy = right_eye - left_eye
    angle = float(np.degrees(np.arctan2(dy, dx)))
    x0, y0, x1, y1 = face.box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    s = face_scale * H / max(y1 - y0, 1.0)
    iw, ih = image_size
    # never zoom out past the image: that would show replicated borders
    s = max(s, W / iw, H / ih)
    M = cv2.getRotationMatrix2D((cx, cy), angle, s)
    M[0, 2] += W / 2 - cx
    M[1, 2] += 0.45 * H - cy
    # shift so the frame stays inside the (rotated) image where possible
    corners = np.array([[0, 0], [iw, 0], [0, ih], [iw, ih]], np.float64)
    mapped = corners @ M[:, :2].T + M[:, 2]
    lo, hi = mapped.min(0), mapped.max(0)
    for axis, extent in ((0, W), (1, H)):
        if lo[axis] > 0:
            M[axis, 2] -= lo[axis]
        elif hi[axis] < extent:
            M[axis, 2] += extent - hi[axis]
    return M


def _cache_path(cfg: Config, engine: str, sha: str, tag: str) -> Path:
    params = {"tag": tag, "size": [cfg.video.width, cfg.video.height], "face_scale": cfg.avatar.face_scale,
              "max_side": cfg.avatar.max_side, "landmarks": cfg.avatar.landmarks}
    ph = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return cfg.cache_dir() / engine / f"{sha[:24]}-{ph}-v{prepared.CACHE_VERSION}.npz"


def prepare_avatar(
    path: Path,
    cfg: Config,
    engine: str,
    precompute: Precompute | None = None,
    detector: Callable[[], LandmarkDetector] | None = None,
    cache_tag: str = "",
) -> PreparedAvatar:
    """Prepare ``path`` for ``engine`` at the configured frame size, using the cache.

    ``detector`` returns the (resident) landmark detector; it is only called on a
    cache miss, because loading the 68-point model costs most of a cached prepare.
    ``cache_tag`` names the version of ``precompute``'s output, so a changed engine
    never reads another version's arrays. A corrupt or outdated cache file is rebuilt; if the cache cannot be written (disk
    full, read-only), the avatar is used uncached and a warning says so.
    """
    t0 = time.perf_counter()
    path = Path(path)
    # a FIFO or /dev/zero must not block or fill memory: regular files only, capped
    raw = read_capped(path, "avatar image", MAX_IMAGE_BYTES, AvatarError)
    sha = hashlib.sha256(raw).hexdigest()
    cpath = _cache_path(cfg, engine, sha, cache_tag) if cfg.cache.enabled else None
    if cpath is not None and cpath.exists():
        try:
            av = prepared.load(cpath)
            av.info["timing_ms"] = {"total": round((time.perf_counter() - t0) * 1e3, 2)}
            av.info["cache_file"] = str(cpath)
            return av
        except ValueError as exc:
            log.warning("avatar cache %s is unusable (%s); rebuilding it", cpath, exc)

    timing = {}
    t = time.perf_counter()
    img = load_image(path, cfg.avatar.max_side)
    timing["load"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    det = detector() if detector is not None else LandmarkDetector(cfg.avatar.landmarks)
    faces = det.detect(img.rgb)
    timing["detect"] = (time.perf_counter() - t) * 1e3
    if not faces:
        raise AvatarError(
            f"{path}: no face found; use a frontal portrait where the face is at least ~80 px tall"
        )
    notes = list(img.notes)
    face = faces[0]
    if len(faces) > 1:
        notes.append(f"{len(faces)} faces found; using the largest at box {[round(v) for v in face.box]}")
        log.warning("%s: %s", path, notes[-1])

    W, H = cfg.video.width, cfg.video.height
    ih, iw = img.rgb.shape[:2]
    M = framing_transform(face, (W, H), cfg.avatar.face_scale, (iw, ih))
    lm = (face.landmarks @ M[:, :2].T + M[:, 2]).astype(np.float32)
    s = float(np.sqrt(abs(np.linalg.det(M[:, :2]))))
    src, Mw = img.rgb, M
    if s < 0.5:  # warpAffine has no area filter: pre-shrink large downscales against aliasing
        nw, nh = max(1, round(iw * 2 * s)), max(1, round(ih * 2 * s))
        src = cv2.resize(src, (nw, nh), interpolation=cv2.INTER_AREA)
        Mw = M @ np.diag([iw / nw, ih / nh, 1.0])
    framed = cv2.warpAffine(src, Mw, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
    x0, y0 = lm.min(0)
    x1, y1 = lm.max(0)
    info = {
        "image": str(path), "original_size": list(img.original_size), "faces": len(faces),
        "detector": det.method, "detector_score": round(face.score, 3),
        "source_face_box": [round(v, 1) for v in face.box], "notes": notes,
        "roll_deg": round(float(np.degrees(np.arctan2(M[1, 0], M[0, 0]))), 2), "scale": round(s, 4),
    }
    av = PreparedAvatar(image=framed, landmarks=lm, face_box=(float(x0), float(y0), float(x1), float(y1)),
                        engine=engine, sha256=sha, info=info)
    if precompute is not None:
        t = time.perf_counter()
        av.photo = Photo(img.rgb, face.landmarks, M)
        try:
            av.data = precompute(av)
        finally:
            av.photo = None  # up to 2048² RGB: not kept with the avatar, and never cached
        timing["precompute"] = (time.perf_counter() - t) * 1e3
    if cpath is not None:
        try:
            prepared.save(cpath, av)
            av.info["cache_file"] = str(cpath)
        except OSError as exc:
            log.warning("cannot write avatar cache %s (%s); running uncached", cpath, exc.strerror or exc)
            av.info["cache_file"] = None
    timing["total"] = (time.perf_counter() - t0) * 1e3
    av.info["timing_ms"] = {k: round(v, 2) for k, v in timing.items()}
    return av
