"""Loading a portrait file into RGB uint8, whatever its mode, orientation or size."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vcam_talker.errors import AvatarError
from vcam_talker.safeio import MB, read_capped

# Pillow refuses larger images as decompression bombs; the limit stays on, and ours is
# far below it: a 12000x12000 16-bit PNG is 280 KB on disk and gigabytes decoded.
MIN_SIDE = 64
#: the largest file read as an image
MAX_IMAGE_BYTES = 64 * MB
#: the most pixels decoded (after a JPEG's own cheap downscale): about 48 MP, 144 MB as RGB
MAX_PIXELS = 48_000_000


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
    data = read_capped(path, "avatar image", MAX_IMAGE_BYTES, AvatarError)
    try:
        with Image.open(io.BytesIO(data)) as im:
            notes: list[str] = []
            w0, h0 = im.size  # from the header: nothing decoded yet
            if im.format == "JPEG" and max(w0, h0) >= 2 * max_side:
                # the JPEG decoder scales by 1/2..1/8 for free: decode no more than needed
                k = max(w0, h0) / max_side
                im.draft("RGB", (int(w0 / k) + 1, int(h0 / k) + 1))
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise AvatarError(f"{path}: image is {w0}x{h0} ({w0 * h0 / 1e6:.0f} MP), more than the "
                                  f"{MAX_PIXELS / 1e6:.0f} MP allowed; scale it down first")
            orientation = _orientation(im)  # after the check: a PNG's EXIF may follow its pixels
            original = (h0, w0) if orientation in (5, 6, 7, 8) else (w0, h0)
            im.load()
            im = _shrink(im, max_side)  # before any conversion, so no full-size copies are made
            im = ImageOps.exif_transpose(im)
            if orientation not in (None, 1):
                notes.append(f"applied EXIF orientation {orientation}")
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im).astype(np.float32)  # already reduced: a small copy
                a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
                hi = float(a.max()) if a.size and a.max() > 0 else 1.0
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
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise AvatarError(f"{path}: cannot decode image ({type(exc).__name__}: {str(exc)[:200]})") from None

    h, w = rgb.shape[:2]
    ow, oh = original
    if min(oh, ow) < MIN_SIDE or min(h, w) < 1:
        raise AvatarError(f"{path}: image is {ow}x{oh}, too small for a face (min side {MIN_SIDE} px)")
    if max(h, w) > max_side:
        import cv2

        rgb = cv2.resize(rgb, (round(w * max_side / max(h, w)), round(h * max_side / max(h, w))),
                         interpolation=cv2.INTER_AREA)
    if rgb.shape[:2] != (oh, ow):
        notes.append(f"downscaled {ow}x{oh} to {rgb.shape[1]}x{rgb.shape[0]}")
    return LoadedImage(np.ascontiguousarray(rgb), original, rgb.shape[1] / ow, notes)


def _shrink(im: Image.Image, max_side: int) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps the longer side >= max_side
    (the exact resize to max_side follows on the small image)."""
    f = max(im.size) // max_side
    if f < 2:
        return im
    if im.mode in ("I;16", "I;16B", "I;16L"):
        im = im.convert("I")  # Pillow's reduce has no 16-bit mode
    elif im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    return im.reduce(f)


def _orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block must not make the image unusable
        return None
