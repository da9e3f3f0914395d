"""Face detection and iBUG-68 landmarks.

dlib's HOG detector with the 68-point predictor shipped by face-recognition-models
works offline on any CPU. face-alignment is more accurate (on a GPU especially) and
is used when it is installed and its weights are already on disk; it never downloads.
"""

from __future__ import annotations

import functools

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vcam_talker.errors import AvatarError

#: detection runs on a copy no larger than this (HOG cost grows with area)
DETECT_MAX_SIDE = 1024


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float
    landmarks: np.ndarray  # 68x2 float32, x right, y down

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def dlib_model_path() -> Path:
    """The 68-point predictor inside face-recognition-models, found without importing
    the package (its import needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise AvatarError("face-recognition-models is not installed: run `pip install face-recognition-models`")
    path = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise AvatarError(f"{path}: the 68-point landmark model is missing; reinstall face-recognition-models")
    return path


def _face_alignment_weights_present() -> bool:
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return hub.is_dir() and any(hub.glob("2DFAN4*")) and any(hub.glob("s3fd*"))


class LandmarkDetector:
    """Finds faces and their 68 landmarks. Resident: models load once.

    method: "dlib", "face-alignment", or "auto" (face-alignment when usable offline).
    """

    def __init__(self, method: str = "auto"):
        self.method = method
        if method in ("auto", "face-alignment"):
            usable = importlib.util.find_spec("face_alignment") is not None and _face_alignment_weights_present()
            if usable:
                self.method = "face-alignment"
            elif method == "face-alignment":
                raise AvatarError(
                    "avatar.landmarks: face-alignment needs its package and its weights in "
                    "~/.cache/torch/hub/checkpoints (2DFAN4*, s3fd*); use 'dlib' or 'auto'"
                )
            else:
                self.method = "dlib"
        if self.method == "dlib":
            import dlib

            self._detector = dlib.get_frontal_face_detector()
            self._predictor = dlib.shape_predictor(str(dlib_model_path()))
        else:
            import face_alignment

            self._fa = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device="cpu")

    def detect(self, rgb: np.ndarray, upsample: int = 1) -> list[Face]:
        """All faces in ``rgb`` (HxWx3 uint8), largest first (ties: higher score)."""
        if self.method == "face-alignment":
            return self._detect_fa(rgb)
        h, w = rgb.shape[:2]
        s = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = rgb
        if s < 1.0:
            import cv2

            small = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        rects, scores, _ = self._detector.run(small, upsample, 0.0)
        faces = []
        for r, score in zip(rects, scores):
            import dlib

            box = (r.left() / s, r.top() / s, r.right() / s, r.bottom() / s)
            full = dlib.rectangle(*(int(round(v)) for v in box))
            faces.append(Face(box, float(score), self.landmarks(rgb, full)))
        faces.sort(key=lambda f: (f.area, f.score), reverse=True)
        return faces

    def landmarks(self, rgb: np.ndarray, rect) -> np.ndarray:
        shape = self._predictor(rgb, rect)
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)

    def _detect_fa(self, rgb: np.ndarray) -> list[Face]:
        preds = self._fa.get_landmarks_from_image(rgb, return_bboxes=True)
        lms, _, boxes = preds if preds is not None else (None, None, None)
        faces = [
            Face(tuple(float(v) for v in b[:4]), float(b[4]) if len(b) > 4 else 1.0, np.asarray(lm[:, :2], np.float32))
            for lm, b in zip(lms or [], boxes or [])
        ]
        faces.sort(key=lambda f: (f.area, f.score), reverse=True)
        return faces


@functools.lru_cache(maxsize=2)
def shared_detector(method: str = "auto") -> LandmarkDetector:
    """One detector per method for the whole process. Loading dlib's models holds the GIL
    for a quarter to half a second, which starves the audio callbacks: the daemon loads
    it once before its audio starts (Daemon.__init__), and engines built by a reload reuse it."""
    return LandmarkDetector(method)
