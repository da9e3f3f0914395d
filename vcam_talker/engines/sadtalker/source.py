"""Per-avatar preparation for the sadtalker engine: the source image, from the photo.

As the reference does, the renderer's source is cut from the original photo at its own
resolution (not from the framed video image), and the 3DMM alignment uses landmarks
re-detected on that size×size source. The framing transform of the avatar is only used to
place the animated face back into the video frame (:mod:`.composite`).

Preprocess modes (the reference's ``--preprocess``):

- ``crop`` / ``full``: the oriented face square of :func:`.preprocess.crop_geometry`;
- ``extcrop`` / ``extfull``: the larger crop box around it (the square plus a 10% border,
  clipped to the photo), squashed to a square as the reference does;
- ``resize``: the whole photo, squashed to a square (for photos that are mostly face).

``full``/``extfull`` paste the result back into the photo; the others show it as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vcam_talker.errors import EngineError

from .composite import face_to_frame, paste_roi
from .face_recon import coeff_3dmm_row
from .preprocess import align_for_recon, crop_face, crop_geometry, flip_landmarks_y, resize_source
from .timeline import SourceCoeffs

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from vcam_talker.avatar.landmarks import LandmarkDetector
    from vcam_talker.avatar.prepared import Photo, PreparedAvatar

    from .engine import Stages

#: the five standard 3-D points of the 3DMM alignment (eyes, nose, mouth corners), from the
#: reference's similarity_Lm3D_all.mat (Apache-2.0 data)
LM3D_STD = np.array(
    [
        [-0.311486572, 0.290360779, 0.133779526],
        [0.309798867, 0.289720356, 0.131795257],
        [0.00325349881, -0.0461793244, 0.552442431],
        [-0.252169281, -0.381339163, 0.224057317],
        [0.248466194, -0.381282359, 0.22235769],
    ],
    dtype=np.float32,
)
#: a source region smaller than this (px of the photo) holds no usable face
MIN_REGION = 8


def source_crop(photo: np.ndarray, lm68: np.ndarray, size: int, mode: str = "crop") -> dict[str, np.ndarray]:
    """The reference's source image of ``photo`` for preprocess ``mode``.

    photo: H×W×3 uint8; lm68: 68×2 landmarks in it. Returns ``source`` size×size×3 uint8,
    ``landmarks`` 68×2 float32 (``lm68`` mapped into the source) and ``box`` float64
    (x0, y0, x1, y1): the photo region the source covers, in photo pixels (edges, not centres).
    """
    h, w = photo.shape[:2]
    if mode == "resize":
        region, origin, resized = photo, (0, 0), (w, h)
    else:
        geometry = crop_geometry(lm68, (w, h))
        ext = mode.startswith("ext")
        region = crop_face(photo, geometry, still=ext)
        origin = geometry.crop_box[:2] if ext else geometry.origin
        resized = geometry.resized  # the reference shrinks photos with faces over ~1000 px first
    ch, cw = region.shape[:2]
    if ch < MIN_REGION or cw < MIN_REGION:
        raise EngineError(f"sadtalker: the face crop is only {cw}x{ch} px; use a larger face")
    sx, sy = w / resized[0], h / resized[1]
    ox, oy = origin
    lm = (np.asarray(lm68, np.float64) / (sx, sy) - (ox, oy)) * (size / cw, size / ch)
    box = np.array([ox * sx, oy * sy, (ox + cw) * sx, (oy + ch) * sy], np.float64)
    return {"source": resize_source(region, size), "landmarks": lm.astype(np.float32), "box": box}


def redetect(source: np.ndarray, mapped: np.ndarray, detector: LandmarkDetector | None) -> np.ndarray | None:
    """68 landmarks detected on the source image, as the reference finds them for its 3DMM
    alignment: of the faces found, the one nearest ``mapped`` (the photo's landmarks mapped
    into the source). None when no face is found within a quarter of the image of them."""
    faces = detector.detect(source) if detector is not None else []
    centre = mapped.mean(0)
    dist = [float(np.linalg.norm(f.landmarks.mean(0) - centre)) for f in faces]
    if not faces or min(dist) > source.shape[0] / 4:
        return None
    return faces[int(np.argmin(dist))].landmarks


def prepare_arrays(
    stages: Stages,
    photo: Photo,
    frame: np.ndarray,
    size: int,
    mode: str,
    full: bool,
    detector: Callable[[], LandmarkDetector] | None = None,
    run: Callable[[Callable[[], Any]], Any] = lambda job: job(),
) -> tuple[dict[str, np.ndarray], dict]:
    """Everything render() needs from one photo (see ``SadTalkerEngine.prepare``).

    frame: the framed avatar image (H×W×3, ``photo.framing`` maps the photo onto it).
    full: the coeff-73 MappingNet (``full``/``extfull``). Returns (arrays, info): float32 /
    uint8 / int arrays ``source`` S×S×3, ``box`` 4 (photo px), ``framing`` 2×3,
    ``paste_box`` 4 (x0, y0, w, h: the frame region a paste can touch), ``trans_params`` 5,
    ``coeff`` 73 (exp ‖ angle ‖ trans ‖ s, tx, ty), ``kp_canonical`` / ``kp_source`` K×3,
    ``feature_3d`` Cf×D×S/4×S/4, ``compressed`` C×D×S/4×S/4; info says which landmarks the
    3DMM alignment used.
    """
    crop = source_crop(photo.rgb, photo.landmarks, size, mode)
    src = crop["source"]
    lm = redetect(src, crop["landmarks"], detector() if detector is not None else None)
    info: dict = {"source_landmarks": "re-detected"}
    if lm is None:
        lm = crop["landmarks"]
        info = {"source_landmarks": "mapped",
                "note": f"no face re-detected on the {size}px sadtalker source crop; its 3DMM fit uses "
                        "the photo's landmarks mapped into the crop"}
    aligned = align_for_recon(src, flip_landmarks_y(lm, size), LM3D_STD)

    def nets() -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with torch.inference_mode():
            coeffs = stages.source.coefficients(aligned.image)
            row = coeff_3dmm_row(coeffs[None], aligned.trans_params)[0]
            x = torch.from_numpy(np.ascontiguousarray(src.transpose(2, 0, 1))).float().div(255)[None]
            enc = stages.source.encode(x)
            window = SourceCoeffs.from_row(row, full).source_window()
            kp_source = stages.motion(torch.from_numpy(window)[None], enc["kp_canonical"])
            arrays = {k: v[0].float().cpu().numpy() for k, v in enc.items()}
            arrays["kp_source"] = kp_source[0].float().cpu().numpy()
        return row, arrays

    row, out = run(nets)  # on the engine's torch thread; the landmark work above stays here
    framing = np.asarray(photo.framing, np.float64)
    x0, y0, w, h = paste_roi(face_to_frame(crop["box"], framing, size), size, frame.shape[1::-1])
    out.update(
        source=src,
        box=crop["box"],
        framing=framing,
        paste_box=np.array([x0, y0, w, h], np.int64),
        source_landmarks=np.asarray(lm, np.float32),
        trans_params=aligned.trans_params,
        coeff=row,
    )
    return out, info


def precompute(
    stages: Stages,
    avatar: PreparedAvatar,
    size: int,
    mode: str,
    full: bool,
    detector: Callable[[], LandmarkDetector] | None = None,
    run: Callable[[Callable[[], Any]], Any] = lambda job: job(),
) -> dict[str, np.ndarray]:
    """``prepare_avatar``'s precompute: :func:`prepare_arrays` on the avatar's photo; what the
    3DMM alignment used goes to ``avatar.info`` (a note when re-detection found no face)."""
    if avatar.photo is None:
        raise EngineError("sadtalker: the avatar's photo is needed to prepare it (prepare it from the image file)")
    data, info = prepare_arrays(stages, avatar.photo, avatar.image, size, mode, full, detector, run)
    avatar.info["source_landmarks"] = info["source_landmarks"]
    if "note" in info:
        avatar.info.setdefault("notes", []).append(info["note"])
        log.warning("%s: %s", avatar.info.get("image", "avatar"), info["note"])
    return data
