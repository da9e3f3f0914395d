"""Putting the animated face into the video frame.

- ``full`` / ``extfull`` (:class:`Paste`): the face covers a box of the *photo*; the framing
  transform carries that box into the frame, so the face is warped there (scaled, and
  rotated by the photo's roll) with a feathered mask. Before that, its low frequencies are
  brought to the photo's at the seam: the difference photo − face is measured on the seam
  band and added to the face, low-passed at two scales: finely (σ = an eighth of the
  feather) across the feather and the first pixels shown at full strength, so no step
  remains there, and coarsely (σ = an eighth of the face) in the interior, so a colour drift
  of the render is removed there too without bringing the photo's detail into the animated
  face. The reference uses a Poisson clone (cv2.seamlessClone) for the same end; this costs
  a few ms a frame on a CPU instead.
- ``crop`` / ``extcrop`` / ``resize`` (:class:`Cover`): the face at its box's aspect (the
  reference resizes its square output back to the crop box), scaled to cover the frame.

Pixel coordinates follow OpenCV: pixel centres at integers.
"""

from __future__ import annotations

import numpy as np

from vcam_talker.lazycv2 import cv2

#: the feathered seam ramps over this fraction of the face side
FEATHER = 0.08
#: photo − face is measured on this outer fraction of the face: the feather and as much again,
#: where the face is first shown at full strength
SEAM_BAND = 2 * FEATHER
#: the fine correction (a Gaussian of FINE_SIGMA × the face side, on an at most FINE_GRID²
#: grid) holds over the feather and a quarter of it more, then hands over to the coarse one
#: (COARSE_SIGMA on a COARSE_GRID² grid) by HANDOVER × the face side
FINE_SIGMA, FINE_GRID = FEATHER / 8, 256
COARSE_SIGMA, COARSE_GRID = 0.12, 32
HANDOVER = (1.25 * FEATHER, 1.75 * FEATHER)


def face_to_frame(box: np.ndarray, framing: np.ndarray, size: int) -> np.ndarray:
    """2×3 affine map from size×size face pixels to frame pixels: the face covers ``box``
    (x0, y0, x1, y1, photo pixel edges) and ``framing`` (2×3) maps the photo to the frame."""
    x0, y0, x1, y1 = (float(v) for v in box)
    kx, ky = (x1 - x0) / size, (y1 - y0) / size
    # face pixel u covers photo [x0 + u·kx, x0 + (u+1)·kx]: its centre is x0 + (u + ½)·kx − ½
    face = np.array([[kx, 0, x0 + 0.5 * kx - 0.5], [0, ky, y0 + 0.5 * ky - 0.5], [0, 0, 1]])
    return (np.vstack([np.asarray(framing, np.float64), [0, 0, 1]]) @ face)[:2]


def paste_roi(A: np.ndarray, size: int, frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, w, h): the frame pixels the face warped by ``A`` can touch, clipped to the
    frame (w or h is 0 when the face lies outside it)."""
    W, H = frame_size
    edges = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    pts = edges @ A[:, :2].T + A[:, 2]
    x0, y0 = np.maximum(np.floor(pts.min(0) + 0.5).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(pts.max(0) - 0.5).astype(int) + 1, (W, H))
    return int(x0), int(y0), int(max(x1 - x0, 0)), int(max(y1 - y0, 0))


def feather_mask(w: int, h: int, fraction: float = FEATHER) -> np.ndarray:
    """h×w×1 float32 blend weights: 1 inside, a smooth ramp to 0 over the border band."""
    band = max(2.0, fraction * min(w, h))
    x = edge_distance(w) / band
    y = edge_distance(h) / band
    m = np.clip(np.minimum(y[:, None], x[None, :]), 0, 1)
    return (m * m * (3 - 2 * m)).astype(np.float32)[..., None]


def edge_distance(n: int) -> np.ndarray:
    """Distance of each of n pixel centres to the nearer edge of the row: 0.5, 1.5, …"""
    i = np.arange(n)
    return np.minimum(i + 0.5, n - i - 0.5)


def _resize(a: np.ndarray, n: int, interpolation: int | None = None) -> np.ndarray:
    return a if a.shape[0] == n else cv2.resize(a, (n, n), interpolation=cv2.INTER_AREA if interpolation is None else interpolation)


class _LowPass:
    """Normalised convolution on a grid² grid: given (values × weight) and the weight, both
    area-reduced to the grid, the Gaussian-weighted mean of the known values near each cell."""

    def __init__(self, weight: np.ndarray, sigma: float, grid: int) -> None:
        self.grid, self.sigma = grid, sigma * grid
        self.norm = np.maximum(self._blur(_resize(weight, grid)), 1e-6)[..., None]

    def _blur(self, a: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(a, (0, 0), self.sigma, borderType=cv2.BORDER_REFLECT)

    def __call__(self, weighted: np.ndarray) -> np.ndarray:
        return self._blur(weighted) / self.norm


class Paste:
    """Pastes size×size faces into ``image`` (the framed portrait, H×W×3 uint8) through
    ``A`` (:func:`face_to_frame`). ``paste(face)`` -> a new H×W×3 uint8 frame."""

    def __init__(self, image: np.ndarray, A: np.ndarray, size: int, colour_match: bool = True) -> None:
        H, W = image.shape[:2]
        self.image, self.A, self.size, self.colour_match = image, np.asarray(A, np.float64), size, colour_match
        x0, y0, w, h = self.roi = paste_roi(self.A, size, (W, H))
        to_roi = self.A.copy()
        to_roi[:, 2] -= (x0, y0)
        mask = cv2.warpAffine(feather_mask(size, size)[..., 0], to_roi, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        self.mask = mask[..., None]
        self.base = image[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
        # shown smaller than rendered: area-shrink first (warpAffine has no area filter)
        kx, ky = np.hypot(*self.A[:, 0]), np.hypot(*self.A[:, 1])
        nw, nh = (size if k >= 1 else max(1, round(size * k)) for k in (kx, ky))
        self._shrink = (nw, nh) if (nw, nh) != (size, size) else None
        up = np.array([[size / nw, 0, 0.5 * size / nw - 0.5], [0, size / nh, 0.5 * size / nh - 0.5], [0, 0, 1]])
        self._patch_map = to_roi @ up

        # colour matching: the photo under each face pixel, the band where it is compared
        # (only where the face lands inside the frame), and where the fine correction holds
        under = cv2.warpAffine(image, self.A, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        inside = cv2.warpAffine(np.ones((H, W), np.float32), self.A, (size, size),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
        e = edge_distance(size)
        d = np.minimum(e[:, None], e[None, :]) / size
        band = (d < SEAM_BAND).astype(np.float32) * inside
        self._band = band[..., None]
        self._fine = _LowPass(band, FINE_SIGMA, min(FINE_GRID, size))
        self._coarse = _LowPass(band, COARSE_SIGMA, min(COARSE_GRID, size))
        # (photo × band) on the fine grid; the area reduction is linear, so the face's part
        # can be reduced on its own each frame and subtracted
        self._under_fine = _resize(under * self._band, self._fine.grid)
        t = np.clip((d - HANDOVER[0]) / (HANDOVER[1] - HANDOVER[0]), 0, 1)
        self._fine_share = _resize((1 - t * t * (3 - 2 * t)).astype(np.float32), self._fine.grid)[..., None]

    def correction(self, face: np.ndarray) -> np.ndarray:
        """size×size×3 float32 to add to ``face`` (size×size×3): photo − face, low-passed from
        the seam band (computed on the fine grid, then enlarged)."""
        diff = self._under_fine - _resize(face.astype(np.float32, copy=False) * self._band, self._fine.grid)
        fine = self._fine(diff)
        coarse = _resize(self._coarse(_resize(diff, self._coarse.grid)), self._fine.grid, cv2.INTER_LINEAR)
        return _resize(coarse + (fine - coarse) * self._fine_share, self.size, cv2.INTER_LINEAR)

    def __call__(self, face: np.ndarray, colour_match: bool | None = None) -> np.ndarray:
        x0, y0, w, h = self.roi
        out = self.image.copy()
        if w == 0 or h == 0:
            return out
        f = face.astype(np.float32)
        if self.colour_match if colour_match is None else colour_match:
            f += self.correction(f)
        if self._shrink is not None:
            f = cv2.resize(f, self._shrink, interpolation=cv2.INTER_AREA)
        patch = cv2.warpAffine(f, self._patch_map, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        blend = self.base + (patch - self.base) * self.mask
        out[y0 : y0 + h, x0 : x0 + w] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
        return out


class Cover:
    """Shows size×size faces at the aspect of their box (w, h), scaled to cover the frame and
    centred. ``cover(face)`` -> H×W×3 uint8."""

    def __init__(self, box_size: tuple[float, float], frame_size: tuple[int, int]) -> None:
        bw, bh = box_size
        W, H = self.frame_size = frame_size
        k = max(W / bw, H / bh)
        self.scaled = (max(W, round(bw * k)), max(H, round(bh * k)))

    def __call__(self, face: np.ndarray) -> np.ndarray:
        (W, H), (tw, th) = self.frame_size, self.scaled
        interp = cv2.INTER_LINEAR if tw * th >= face.shape[0] * face.shape[1] else cv2.INTER_AREA
        big = cv2.resize(face, (tw, th), interpolation=interp)
        y0, x0 = (th - H) // 2, (tw - W) // 2
        return np.ascontiguousarray(big[y0 : y0 + H, x0 : x0 + W])


def display(full: bool, image: np.ndarray, data: dict[str, np.ndarray], size: int):
    """How a prepared avatar's faces reach its frame: :class:`Paste` for the ``full`` modes,
    else :class:`Cover`. data: the prepared arrays (``box``, ``framing``)."""
    box = np.asarray(data["box"], np.float64)
    if full:
        return Paste(image, face_to_frame(box, data["framing"], size), size)
    return Cover((box[2] - box[0], box[3] - box[1]), (image.shape[1], image.shape[0]))
