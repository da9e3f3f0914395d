"""The inside of the mouth: a cavity painted between the output inner lips.

Dark interior shaded from the face's own lip colour, upper teeth fixed to the skull (they
stay when the jaw drops), lower teeth riding with the jaw once it is open wide enough, and a
tongue on wide vowels. Painted after the remap, so nothing of the photo's own mouth interior
shows unless the photo's teeth are used on purpose.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def clip(x, lo: float = 0.0, hi: float = 1.0):
    """np.clip without its Python wrapper (4-5 µs a call, dozens of calls a frame)."""
    return np.minimum(np.maximum(x, lo), hi)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = clip(x)
    return x * x * (3 - 2 * x)


def teeth_colour(image: np.ndarray, lm: np.ndarray, cheek: np.ndarray) -> tuple[np.ndarray, bool]:
    """The photo's own teeth colour where its mouth shows them (bright, low-saturation pixels
    between the inner lips), else an ivory lit like this face."""
    x0, x1 = int(lm[61, 0]), int(math.ceil(lm[63, 0])) + 1
    y0, y1 = int(math.ceil(lm[[61, 62, 63], 1].max())), int(lm[[65, 66, 67], 1].min())
    if y1 - y0 >= 2 and x1 - x0 >= 3:
        px = image[y0:y1, x0:x1].reshape(-1, 3).astype(np.float32)
        lum, sat = px.mean(1), px.max(1) - px.min(1)
        bright = px[(lum > 0.8 * cheek.mean()) & (sat < 0.35 * np.maximum(lum, 1))]
        if len(bright) >= max(6, 0.3 * len(px)):
            return np.median(bright, 0), True
    light = float(np.clip(cheek.mean() / 170.0, 0.55, 1.25))
    return np.array([212.0, 203.0, 190.0]) * light, False


def paint_cavity(out: np.ndarray, px: np.ndarray, top: np.ndarray, bot: np.ndarray, skull: np.ndarray,
                 tuck: float, colors: np.ndarray, mouth_w: float, photo=None) -> None:
    """The mouth's inside between the output inner lips ``top`` and ``bot`` at columns
    ``px``: a dark interior from this face's lip colour, the upper teeth hanging from
    ``skull`` (the source's upper inner lip: they stay when the jaw drops), the lower
    teeth riding on the lower lip once the jaw is open wide enough, and the tongue on
    wide vowels. ``tuck`` (f, v): the upper teeth rest on the lower lip. ``colors``: the rig's
    lip, cheek and teeth rows; ``photo(x0, y0, x1, y1)``, when given, returns the photo's own
    teeth under an output box (or None)."""
    H, W = out.shape[:2]
    pts = np.concatenate([np.stack([px, top], 1), np.stack([px[::-1], bot[::-1]], 1)])
    bx0 = int(max(0, math.floor(px.min()) - 2))
    bx1 = int(min(W, math.ceil(px.max()) + 3))
    by0 = int(max(0, math.floor(top.min()) - 2))
    by1 = int(min(H, math.ceil(bot.max()) + 3))
    if bx1 <= bx0 or by1 <= by0:
        return
    mask = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
    poly = np.round((pts - [bx0, by0]) * 16).astype(np.int32)
    cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_AA, shift=4)
    # soft lip edge: a hard polygon edge reads as a cut-out
    alpha = cv2.GaussianBlur(mask, (3, 3), 0.7).astype(np.float32) / 255.0
    if alpha.max() == 0:
        return

    cols = np.arange(bx0, bx1, dtype=np.float32)
    yt = np.interp(cols, px, top)[None, :]
    yb = np.interp(cols, px, bot)[None, :]
    ys = np.interp(cols, px, skull)[None, :]
    gap = np.maximum(yb - yt, 1e-3)
    # a slit of a pixel or two is the lips' contact shadow, not a dark hole
    alpha *= smoothstep((gap - 0.8) / 2.5)
    rows = np.arange(by0, by1, dtype=np.float32)[:, None]
    u = (rows - yt) / gap  # 0 at the upper inner lip, 1 at the lower
    lip, cheek, teeth_rgb = colors[:3]
    mid = (px.min() + px.max()) / 2
    halfw = max((px.max() - px.min()) / 2, 1.0)
    lateral = np.sqrt(clip(1.0 - ((cols - mid) / halfw) ** 2))[None, :]
    mw = mouth_w
    # deep red-brown, darkest at the back of the mouth and towards the corners
    depth = (0.35 + 0.45 * clip(np.abs(2 * u - 1)) ** 1.5) * (0.45 + 0.55 * lateral)
    col = (lip * np.array([0.40, 0.17, 0.19]))[None, None, :] * depth[..., None]
    wide = clip((gap - 0.22 * mw) / (0.1 * mw))
    if wide.any():  # the tongue, a rounded hump low in the mouth
        hump = smoothstep((u - 0.58 + 0.12 * (1 - lateral)) / 0.22) * wide * lateral ** 0.6
        tongue = lip * np.array([0.78, 0.42, 0.44]) * (0.7 + 0.3 * clip((1 - u) * 3))[..., None]
        col += hump[..., None] * (tongue - col)
    # upper teeth: from under the upper lip down to an edge fixed to the skull
    # the edge follows the dental arch: the central incisors reach lowest
    edge = ys + (0.03 + 0.03 * lateral) * mw
    edge = np.maximum(edge, yt + tuck * gap)
    below = rows - yt
    show = smoothstep((gap - 1.5) / 4.0)  # a slit shows lip shadow, not a pale line
    upper = smoothstep((edge - rows) / 1.1) * smoothstep(below / 1.0) * lateral ** 1.2 * show
    # incisors lighter at the middle, shaded towards the corners and the biting edge
    shade = (0.7 + 0.3 * lateral) * (0.72 + 0.28 * smoothstep(below / 3.0))
    lower_w = clip((gap - 0.2 * mw) / (0.08 * mw)) * (1.0 - tuck)
    if lower_w.any():  # lower teeth: a band just inside the lower lip, only when wide
        lower = (smoothstep((rows - (yb - 0.03 * mw)) / 1.0) * smoothstep((yb - rows) / 0.8)
                 * lateral ** 2 * lower_w)
        col += (0.7 * lower)[..., None] * (teeth_rgb * 0.66 - col)
    src = photo(bx0, by0, bx1, by1) if photo else None  # the photo's own teeth, on the skull
    teeth_px = src if src is not None else teeth_rgb * shade[..., None]
    col += upper[..., None] * (teeth_px - col)
    roi = out[by0:by1, bx0:bx1].astype(np.float32)
    a = alpha[..., None]
    out[by0:by1, bx0:bx1] = clip(roi + a * (col - roi), 0, 255).astype(np.uint8)
