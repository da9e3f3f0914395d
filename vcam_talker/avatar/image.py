"""Loading a portrait file into RGB uint8, whatever its mode, orientation or size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vcam_talker.errors import AvatarError

# Pillow refuses larger images as decompression bombs; the limit stays on.
MIN_SIDE = 64


@dataclass
class LoadedImage:
    """rgb: HxWx3 uint8. notes: what was done to the file (shown by `prepare`)."""

    rgb: np.ndarray
    original_size: tuple[int, int]
    scale: float
    notes: list[str]


def load_image(path: Path, max_side: int = 2048) -> LoadedImage:
    """Read ``path``; apply EXIF rotation, convert grayscale/palette/16-bit to RGB,
    composite transparency on white, and downscale so the longer side is <= max_side.

    Raises AvatarError with a one-line reason for anything that is not a usable image.
    """
    if not path.exists():
        raise AvatarError(f"{path}: avatar image not found")
    if path.is_dir():
        raise AvatarError(f"{path}: is a folder, not an image")
    try:
        with Image.open(path) as im:
            im.load()
            notes: list[str] = []
            orientation = _orientation(im)
            im = ImageOps.exif_transpose(im)
            if orientation not in (None, 1):
                notes.append(f"applied EXIF orientation {orientation}")
            original = im.size
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64)
                hi = a.max() or 1.0
                im = Image.fromarray((a * (255.0 / hi)).clip(0, 255).astype(np.uint8))
                notes.append(f"converted {mode} to 8-bit")
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
                notes.append("composited transparency on white")
            if im.mode != "RGB":
                if im.mode in ("L", "1"):
                    notes.append("grayscale image converted to RGB")
                im = im.convert("RGB")
            rgb = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise AvatarError(f"{path}: not an image file (PNG, JPEG, WebP, BMP, TIFF are supported)") from None
    except Image.DecompressionBombError as exc:
        raise AvatarError(f"{path}: image is too large to open safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise AvatarError(f"{path}: cannot decode image ({exc})") from None

    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise AvatarError(f"{path}: image is {w}x{h}, too small for a face (min side {MIN_SIDE} px)")
    scale = 1.0
    if max(h, w) > max_side:
        import cv2

        scale = max_side / max(h, w)
        rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        notes.append(f"downscaled {w}x{h} to {rgb.shape[1]}x{rgb.shape[0]}")
    return LoadedImage(np.ascontiguousarray(rgb), original, scale, notes)


def _orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block must not make the image unusable
        return None
