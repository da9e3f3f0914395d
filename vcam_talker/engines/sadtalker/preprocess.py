"""The reference's source-image geometry: the face crop from 68 landmarks and the 3DMM alignment.

Face crop ('crop' mode), from 68 iBUG landmarks (x right, y down) of the full image:

- an FFHQ-style oriented square from the eye centres (means of points 36-41 and 42-47) and the
  mouth corners (48, 54): with ``e2e`` = eye to eye and ``e2m`` = eye midpoint to mouth midpoint,
  ``x = e2e - (-e2m_y, e2m_x)``, normalised and scaled to ``max(2·|e2e|, 1.8·|e2m|)``,
  ``y = (-x_y, x_x)``, centre ``c = eye_avg + 0.1·e2m``, corners c−x−y, c−x+y, c+x+y, c+x−y;
- the image is shrunk when ``floor(qsize / 512 / 2) > 1`` (2048-px faces and up);
- crop box = the corners' bounding box grown by ``max(round(0.1·qsize), 3)``, clipped;
- the corners, moved into the crop and shifted by +0.5, give the final box
  ``(lx, ly, rx, ry)``, clamped to the image; ``ry`` is clamped by the image **width** (a
  reference quirk we keep);
- the image is cut to the crop box, then to ``int()`` of the final box, and resized to
  256×256 with cv2 INTER_LINEAR: the renderer's source image.

3DMM alignment (:func:`align_for_recon`), from landmarks re-detected on the 256 crop with y
flipped (``y' = H - 1 - y``): five points (eye centres, nose tip, mouth corners) are fitted to the
five standard 3D points by least squares (scale and translation), the image is resized by
``s = 102 / scale`` with PIL BICUBIC and cut to 224×224 around the fitted centre.

All uint8 images are H×W×3 RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from vcam_talker.lazycv2 import cv2

#: the reference's ``xsize`` for the crop stage (only decides when to shrink)
CROP_OUTPUT_SIZE = 512
SOURCE_SIZE = 256
RECON_SIZE = 224
RECON_RESCALE = 102.0


@dataclass(frozen=True)
class CropGeometry:
    """Where the face crop lies in a full image.

    - ``resized``: (W, H) the image is first resized to (its own size unless shrunk);
    - ``crop_box``: (clx, cly, crx, cry) int, the padded bounding box of the oriented square;
    - ``quad``: (lx, ly, rx, ry) float, the final box inside the crop box;
    - ``box``: ``int()`` of ``quad``;
    - ``size``: (width, height) of the final box; ``origin``: its top-left in the full image.
    """

    resized: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    quad: tuple[float, float, float, float]

    @property
    def box(self) -> tuple[int, int, int, int]:
        lx, ly, rx, ry = self.quad
        return int(lx), int(ly), int(rx), int(ry)

    @property
    def size(self) -> tuple[int, int]:
        lx, ly, rx, ry = self.box
        return rx - lx, ry - ly

    @property
    def origin(self) -> tuple[int, int]:
        lx, ly, _, _ = self.box
        return self.crop_box[0] + lx, self.crop_box[1] + ly


def crop_geometry(lm68: np.ndarray, image_size: tuple[int, int], output_size: int = CROP_OUTPUT_SIZE) -> CropGeometry:
    """The 'crop' mode geometry. lm68: 68×2 (x, y down) in the image; image_size: (W, H).

    Computed in float64 whatever the landmarks' dtype, as the reference (its detector gives float64).
    """
    lm = np.asarray(lm68, dtype=np.float64)
    eye_left = np.mean(lm[36:42], axis=0)
    eye_right = np.mean(lm[42:48], axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = np.hypot(*x) * 2

    w, h = image_size
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        w, h = int(np.rint(float(w) / shrink)), int(np.rint(float(h) / shrink))
        quad /= shrink
        qsize /= shrink
    else:
        w, h = int(np.rint(float(w))), int(np.rint(float(h)))

    border = max(int(np.rint(qsize * 0.1)), 3)
    box = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    crop = (max(box[0] - border, 0), max(box[1] - border, 0), min(box[2] + border, w), min(box[3] + border, h))
    if crop[2] - crop[0] < w or crop[3] - crop[1] < h:
        quad -= crop[0:2]

    q = (quad + 0.5).flatten()
    lx = max(min(q[0], q[2]), 0)
    ly = max(min(q[1], q[7]), 0)
    rx = min(max(q[4], q[6]), w)
    ry = min(max(q[3], q[5]), w)  # sic: width, as the reference
    return CropGeometry((w, h), crop, (float(lx), float(ly), float(rx), float(ry)))


def crop_face(image: np.ndarray, geometry: CropGeometry, still: bool = False) -> np.ndarray:
    """Cut the face out of an H×W×3 uint8 image: crop box, then (unless ``still``, the 'ext'
    modes) the final box. Returns a view when no shrink was needed."""
    h, w = image.shape[:2]
    if (w, h) != geometry.resized:
        image = cv2.resize(image, geometry.resized)
    clx, cly, crx, cry = geometry.crop_box
    out = image[cly:cry, clx:crx]
    if not still:
        lx, ly, rx, ry = geometry.box
        out = out[ly:ry, lx:rx]
    return out


def resize_source(image: np.ndarray, size: int = SOURCE_SIZE) -> np.ndarray:
    """The renderer's source image: cv2 INTER_LINEAR resize to size×size. H×W×3 -> size×size×3."""
    return cv2.resize(image, (size, size))


def flip_landmarks_y(lm68: np.ndarray, height: int) -> np.ndarray:
    """y-down image landmarks to the alignment's y-up convention: y' = height - 1 - y."""
    out = np.array(lm68, copy=True)
    out[:, -1] = height - 1 - out[:, -1]
    return out


def five_points(lm68: np.ndarray) -> np.ndarray:
    """68 landmarks -> 5×2: eye centres (mean of 36,39 and 42,45), nose tip 30, mouth corners 48, 54."""
    lm = np.asarray(lm68)
    return np.stack(
        [np.mean(lm[[36, 39]], 0), np.mean(lm[[42, 45]], 0), lm[30], lm[48], lm[54]], axis=0
    )


def fit_scale_translation(lm5: np.ndarray, lm3d5: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares fit of 2-D points to 3-D points with an affine x/y projection.

    Solves u = a·X + tx, v = b·X + ty (a, b in R^3) for all points; returns t = (tx, ty) as a
    2×1 float64 array and the scale (|a| + |b|) / 2. lm5: K×2, lm3d5: K×3.
    """
    pts3 = np.asarray(lm3d5)
    k = pts3.shape[0]
    a = np.zeros([2 * k, 8])
    a[0::2, 0:3] = pts3
    a[0::2, 3] = 1
    a[1::2, 4:7] = pts3
    a[1::2, 7] = 1
    b = np.reshape(np.asarray(lm5), [2 * k, 1])
    sol = np.linalg.lstsq(a, b, rcond=None)[0]
    scale = (np.linalg.norm(sol[0:3]) + np.linalg.norm(sol[4:7])) / 2
    return np.stack([sol[3], sol[7]], axis=0), float(scale)


@dataclass(frozen=True)
class Alignment:
    """Result of :func:`align_for_recon`.

    ``trans_params``: float32 [w0, h0, s, tx, ty]; ``image``: 224×224×3 uint8;
    ``landmarks``: 68×2 in the 224 crop, y up.
    """

    trans_params: np.ndarray
    image: np.ndarray
    landmarks: np.ndarray


def align_for_recon(
    image: np.ndarray,
    lm68_yup: np.ndarray,
    lm3d_std: np.ndarray,
    target_size: int = RECON_SIZE,
    rescale_factor: float = RECON_RESCALE,
) -> Alignment:
    """The 3DMM net's input crop. image: H×W×3 uint8; lm68_yup: 68×2 (y flipped, see
    :func:`flip_landmarks_y`) or already 5×2; lm3d_std: 5×3 standard points."""
    lm = np.asarray(lm68_yup)
    h0, w0 = image.shape[:2]
    lm5 = lm if lm.shape[0] == 5 else five_points(lm)
    t, scale = fit_scale_translation(lm5, lm3d_std)
    s = np.float64(rescale_factor / scale)

    # the reference's float64 → int32 truncations, in its order of operations
    w = (w0 * s).astype(np.int32)
    h = (h0 * s).astype(np.int32)
    left = (w / 2 - target_size / 2 + ((t[0] - w0 / 2) * s).item()).astype(np.int32)
    up = (h / 2 - target_size / 2 + ((h0 / 2 - t[1]) * s).item()).astype(np.int32)
    pil = Image.fromarray(image).resize((int(w), int(h)), resample=Image.BICUBIC)
    crop = pil.crop((int(left), int(up), int(left) + target_size, int(up) + target_size))

    lm_new = np.stack([lm[:, 0] - t[0] + w0 / 2, lm[:, 1] - t[1] + h0 / 2], axis=1) * s
    lm_new = lm_new - np.reshape(np.array([(w / 2 - target_size / 2), (h / 2 - target_size / 2)]), [1, 2])
    trans = np.array([w0, h0, float(s), float(t[0, 0]), float(t[1, 0])], dtype=np.float64).astype(np.float32)
    return Alignment(trans, np.asarray(crop), lm_new)


@dataclass(frozen=True)
class SourcePrep:
    """The reference's 'crop'-mode preparation of one source image (see :func:`prepare_source`)."""

    geometry: CropGeometry
    crop: np.ndarray
    source256: np.ndarray


def prepare_source(image: np.ndarray, lm68: np.ndarray, size: int = SOURCE_SIZE) -> SourcePrep:
    """Crop geometry, face crop and the size×size source image. image: H×W×3 uint8 RGB;
    lm68: 68×2 landmarks of the full image (x right, y down)."""
    h, w = image.shape[:2]
    geometry = crop_geometry(lm68, (w, h))
    crop = crop_face(image, geometry)
    return SourcePrep(geometry, crop, resize_source(crop, size))
