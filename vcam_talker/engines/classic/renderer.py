"""Landmark-driven warping of the photo.

Each frame is an inverse map (output pixel → source pixel) over the head region only,
built from three parts:

- head sway: a small rotation/translation, feathered to nothing at the head's edge;
- mouth and jaw: a *column model*. For every image column under the nose, seven knots
  (philtrum, upper outer lip, upper inner lip, lower inner lip, lower outer lip, jaw
  line, neck) move vertically, and the column is mapped piecewise-linearly between
  them. The segment between the inner lips is where the mouth opens: it is painted as
  a cavity (dark interior, teeth band). The source's own gap (teeth in a smile) is never
  shown, which is how an open-mouthed photo closes in silence;
- eyelids: the same column model per eye; the upper lid slides down over the eye and
  the skin above it stretches.

Lip spreading/rounding is a horizontal scaling around the mouth centre.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from vcam_talker.engines.classic.cavity import clip as _clip
from vcam_talker.engines.classic.cavity import smoothstep as _smoothstep
from vcam_talker.engines.classic.cavity import paint_cavity, teeth_colour
from vcam_talker.engines.classic.motion import Motion

UPPER_OUTER = [48, 49, 50, 51, 52, 53, 54]
LOWER_OUTER = [48, 59, 58, 57, 56, 55, 54]
UPPER_INNER = [60, 61, 62, 63, 64]
LOWER_INNER = [60, 67, 66, 65, 64]
JAW = list(range(3, 14))


def _curve(lm: np.ndarray, ids: list[int], xs: np.ndarray) -> np.ndarray:
    """y of the polyline through landmarks ``ids`` (sorted by x) at columns xs; held flat past its ends."""
    pts = lm[ids]
    order = np.argsort(pts[:, 0], kind="stable")
    px, py = pts[order, 0], pts[order, 1]
    px = np.maximum.accumulate(px + np.arange(len(px)) * 1e-3)  # strictly increasing for interp
    return np.interp(xs, px, py).astype(np.float32)


def build_rig(image: np.ndarray, lm: np.ndarray) -> dict[str, np.ndarray]:
    """Everything per-avatar the renderer needs, as arrays (so it can be cached).

    image: HxWx3 uint8; lm: 68x2 float32 in image pixels.
    """
    H, W = image.shape[:2]
    lm = lm.astype(np.float32)
    brow = lm[17:27].mean(0)
    chin = lm[8]
    face_h = float(np.linalg.norm(chin - brow)) * 1.25
    face_w = float(lm[16, 0] - lm[0, 0])
    mouth_w = float(lm[54, 0] - lm[48, 0])

    # head region: the only part recomputed per frame
    x0 = int(max(0, math.floor(lm[:, 0].min() - 0.3 * face_w)))
    x1 = int(min(W, math.ceil(lm[:, 0].max() + 0.3 * face_w)))
    y0 = int(max(0, math.floor(lm[:, 1].min() - 0.6 * face_h)))
    y1 = int(min(H, math.ceil(chin[1] + 0.45 * face_h)))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    c = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float32)
    r = np.sqrt(((xs - c[0]) / ((x1 - x0) / 2)) ** 2 + ((ys - c[1]) / ((y1 - y0) / 2)) ** 2)
    feather = _smoothstep((1.0 - r) / 0.35).astype(np.float32)
    pivot = np.array([chin[0], chin[1] + 0.25 * face_h], np.float32)  # the neck

    # mouth/jaw column model over the jaw's width, with margin for sway shifts
    mx0 = int(max(x0, math.floor(lm[3, 0])))
    mx1 = int(min(x1, math.ceil(lm[13, 0]) + 1))
    grid = np.arange(mx0 - 16, mx1 + 16, dtype=np.float32)
    k0 = np.full_like(grid, lm[33, 1] + 0.35 * (lm[51, 1] - lm[33, 1]))
    jaw = _curve(lm, JAW, grid)
    knots = np.stack([
        k0,
        _curve(lm, UPPER_OUTER, grid),
        _curve(lm, UPPER_INNER, grid),
        _curve(lm, LOWER_INNER, grid),
        _curve(lm, LOWER_OUTER, grid),
        jaw,
        jaw + 0.3 * face_h,
    ])
    knots = np.maximum.accumulate(knots, axis=0)
    # rows above the philtrum too: the lips' horizontal motion fades out there, not at a seam
    my0 = int(max(y0, math.floor(knots[0].min() - 0.1 * face_h)))
    my1 = int(min(y1, math.ceil(knots[-1].max()) + 2))
    mouth_c = np.array([(lm[48, 0] + lm[54, 0]) / 2, lm[[62, 66], 1].mean()], np.float32)
    inner_half = max((lm[64, 0] - lm[60, 0]) / 2, 2.0) * 1.05
    # jaw follows the chin fully and fades towards the jaw angles
    jaw_w = np.clip(1 - ((grid - chin[0]) / (0.5 * (lm[13, 0] - lm[3, 0]))) ** 2, 0, 1) ** 0.7
    # lip motion fades out past the mouth corners
    fade = max(min(0.6 * mouth_w, mouth_c[0] - mx0 - mouth_w / 2 - 2, mx1 - mouth_c[0] - mouth_w / 2 - 2), 2.0)
    lip_w = _smoothstep(1.0 - (np.abs(grid - mouth_c[0]) - mouth_w / 2) / fade)
    # horizontal spreading: a band around the lips, fading above and below
    rows = np.arange(my0, my1, dtype=np.float32)
    # (zero at the box's top and bottom rows, or a strong rounding shears a seam there)
    reach = max(min(0.21 * face_h, mouth_c[1] - my0, my1 - 1 - mouth_c[1]), 1.0)
    band = _smoothstep(1.0 - np.abs(rows - mouth_c[1]) / reach)

    # eyes: [top anchor, upper lid, lower lid] per column
    eyes = []
    for ids_u, ids_l, brow_ids in (([36, 37, 38, 39], [36, 41, 40, 39], [17, 18, 19, 20, 21]),
                                   ([42, 43, 44, 45], [42, 47, 46, 45], [22, 23, 24, 25, 26])):
        ex0 = int(math.floor(lm[ids_u[0], 0]) - 3)
        ex1 = int(math.ceil(lm[ids_u[-1], 0]) + 4)
        eg = np.arange(ex0, ex1, dtype=np.float32)
        up = _curve(lm, ids_u, eg)
        lo = np.maximum(_curve(lm, ids_l, eg), up)
        top = up - 0.6 * np.maximum(up - _curve(lm, brow_ids, eg), 2.0)
        ey0 = int(math.floor(top.min()) - 1)
        ey1 = int(math.ceil(lo.max()) + 2)
        eyes.append((np.array([ex0, ex1, ey0, ey1], np.int32), np.stack([top, up, lo])))

    # colours for the mouth cavity, taken from this face
    lip_pts = lm[[50, 52, 56, 58]].astype(int)
    lip = np.mean([image[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].reshape(-1, 3).mean(0)
                   for x, y in lip_pts], axis=0)
    cheek_pts = (lm[[2, 14]] * 0.6 + lm[[30, 30]] * 0.4).astype(int)
    cheek = np.mean([image[max(y - 3, 0):y + 4, max(x - 3, 0):x + 4].reshape(-1, 3).mean(0)
                     for x, y in cheek_pts], axis=0)

    teeth, shows_teeth = teeth_colour(image, lm, cheek)
    return {
        "head_box": np.array([x0, y0, x1, y1], np.int32),
        "head_feather": feather,
        "head_pivot": pivot,
        "scales": np.array([face_h, face_w, mouth_w, inner_half], np.float32),
        "mouth_box": np.array([mx0, mx1, my0, my1], np.int32),
        "mouth_grid": grid,
        "mouth_knots": knots.astype(np.float32),
        "mouth_center": mouth_c,
        "jaw_w": jaw_w.astype(np.float32),
        "lip_w": lip_w.astype(np.float32),
        "lip_band": band.astype(np.float32),
        "eye_boxes": np.stack([e[0] for e in eyes]),
        "eye0_curves": eyes[0][1].astype(np.float32),
        "eye1_curves": eyes[1][1].astype(np.float32),
        "colors": np.stack([lip, cheek, teeth]).astype(np.float32),
        # 1 where the photo's own mouth shows teeth: the renderer paints those
        "photo_teeth": np.array([1.0 if shows_teeth else 0.0], np.float32),
    }


def _sample(table: np.ndarray, g0: float, x: np.ndarray) -> np.ndarray:
    """Every row of ``table`` (sampled at columns g0, g0+1, …) at ``x``, linearly and held
    flat past the ends: ``np.interp`` per row, with the weights found once for all rows."""
    u = _clip(np.asarray(x, np.float64) - g0, 0.0, table.shape[1] - 1)
    i = np.minimum(u.astype(np.intp), table.shape[1] - 2)
    w = u - i
    return table[:, i] * (1.0 - w) + table[:, i + 1] * w


def column_delta(knots_out: np.ndarray, knots_src: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Vertical inverse displacement of a piecewise-linear column map.

    knots_out, knots_src: KxW, non-decreasing along K (an empty output segment is a jump).
    y: Hx1 output rows. Returns HxW (source y − output y); zero outside the knots.
    """
    # float32, few whole-array passes and flat gathers: this ran at 0.4 ms of a 1.8 ms
    # frame as 3-D comparisons and 2-D fancy indexing in float64 (bench_classic.py)
    knots_out = knots_out.astype(np.float32, copy=False)
    knots_src = knots_src.astype(np.float32, copy=False)
    y = y.astype(np.float32, copy=False)
    K, W = knots_out.shape
    d_out = np.diff(knots_out, axis=0)
    slope = np.where(d_out > 1e-3, np.diff(knots_src, axis=0) / np.maximum(d_out, 1e-3), 1.0).astype(np.float32)
    # source y − output y = offset + (slope − 1)·y within each segment
    offset = (knots_src[:-1] - knots_out[:-1] * slope).ravel()
    slope = (slope - 1.0).ravel()
    yb = np.broadcast_to(y, (len(y), W))
    seg = np.zeros(yb.shape, np.uint8)  # bytes: the K−2 comparison passes stay cheap
    for k in range(1, K - 1):
        seg += yb >= knots_out[k]
    idx = seg.astype(np.intp)
    idx *= W
    idx += np.arange(W)  # flat index of (segment, column)
    out = slope.take(idx)
    out *= y
    out += offset.take(idx)
    out[(yb < knots_out[0]) | (yb >= knots_out[-1])] = 0.0
    return out


class Renderer:
    """Warps a prepared avatar by a :class:`Motion`. Stateless apart from scratch buffers."""

    def __init__(self, image: np.ndarray, rig: dict[str, np.ndarray]):
        self.image = image
        self.rig = rig
        x0, y0, x1, y1 = (int(v) for v in rig["head_box"])
        self.head = (x0, y0, x1, y1)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        f = rig["head_feather"].astype(np.float32)
        px, py = rig["head_pivot"]
        self.base_x, self.base_y = xs, ys
        self.f, self.fx, self.fy = f, f * (xs - px), f * (ys - py)
        self._map_x, self._map_y = np.empty_like(xs), np.empty_like(ys)  # reused every frame
        # the mouth's per-column curves on their unit-step grid: 7 knots, jaw and lip weights
        self._mouth_g0 = float(rig["mouth_grid"][0])
        self._mouth_table = np.vstack([rig["mouth_knots"], rig["jaw_w"][None], rig["lip_w"][None]]).astype(np.float64)
        face_h, face_w, mouth_w, inner_half = (float(v) for v in rig["scales"])
        self.face_h, self.mouth_w, self.inner_half = face_h, mouth_w, inner_half
        self._contact = None
        self.photo_teeth = bool(rig.get("photo_teeth", np.zeros(1))[0] > 0.5)
        # how far inside each lip the opening samples: further where the photo shows teeth,
        # since its inner-lip landmarks often sit on them
        self.lip_margin = 0.8 + (0.03 * mouth_w if self.photo_teeth else 0.0)
        # lower teeth sit deeper below the landmark: sampled nearer, they read as a pale lip
        # and dlib as an open mouth (0.04 IOD shut; 0.01 with this margin, obama_2012.jpg)
        self.lip_margin_lower = 0.8 + (0.08 * mouth_w if self.photo_teeth else 0.0)
        self.eyes = [(tuple(int(v) for v in box), rig[f"eye{i}_curves"])
                     for i, box in enumerate(rig["eye_boxes"])]

    def _sway_at(self, m: Motion, x: float, y: float) -> tuple[float, float]:
        """Inverse sway displacement at a point where the feather is 1."""
        s = self.face_h / 100.0
        th = math.radians(m.sway_deg)
        px, py = self.rig["head_pivot"]
        return (-(m.sway_x * s) + th * (y - py), -(m.sway_y * s) - th * (x - px))

    def render(self, m: Motion, lap=None) -> np.ndarray:
        """One HxWx3 uint8 frame for motion ``m``. ``lap(name)``, when given, is called
        after each stage (benchmarks/bench_classic.py times them)."""
        lap = lap or (lambda name: None)
        out = self.image.copy()
        x0, y0, x1, y1 = self.head
        s = self.face_h / 100.0
        th = math.radians(m.sway_deg)
        # sway: base − shift·feather ± θ·feather·(p − pivot), two fused passes per axis
        map_x = cv2.scaleAdd(self.f, -(m.sway_x * s), self.base_x, dst=self._map_x)
        map_x = cv2.scaleAdd(self.fy, th, map_x, dst=map_x)
        map_y = cv2.scaleAdd(self.f, -(m.sway_y * s), self.base_y, dst=self._map_y)
        map_y = cv2.scaleAdd(self.fx, -th, map_y, dst=map_y)
        lap("sway maps")
        poly = self._mouth(m, map_x, map_y)
        lap("mouth and jaw map")
        self._eyes(m, map_x, map_y)
        lap("eyelid map")
        # fixed-point maps: remap interpolates at 1/32 pixel either way, and converting
        # once is cheaper than remap's own per-tile conversion of float maps
        m1, m2 = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)
        out[y0:y1, x0:x1] = cv2.remap(self.image, m1, m2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        lap("remap")
        self._soften_contact(out)
        if poly is not None:
            px, top, bot, skull, tuck = poly
            photo = self._photo_region if self.photo_teeth else None
            paint_cavity(out, px, top, bot, skull, tuck, self.rig["colors"], self.mouth_w, photo)
        lap("mouth cavity")
        return out

    def _mouth(self, m: Motion, map_x: np.ndarray, map_y: np.ndarray):
        rig = self.rig
        mx0, mx1, my0, my1 = (int(v) for v in rig["mouth_box"])
        x0, y0 = self.head[0], self.head[1]
        cx, cy = (float(v) for v in rig["mouth_center"])
        dxc, dyc = self._sway_at(m, cx, cy)
        self._sway_mouth = (dxc, dyc)
        cols = np.arange(mx0, mx1, dtype=np.float32)
        qx = cols + dxc
        # lip spreading (+) / rounding (−): source column for each face column
        sw = 0.12 * m.width - 0.26 * m.round
        lip_w = _sample(self._mouth_table[8:], self._mouth_g0, qx)[0]
        rx = cx + (qx - cx) / (1.0 + sw * lip_w)
        at_rx = _sample(self._mouth_table, self._mouth_g0, rx)
        ks, jaw_w, lw = at_rx[:7], at_rx[7], at_rx[8]

        # target inner-lip gap: an ellipse across the inner mouth, narrower and rounder
        # when rounded; f/v keep a slit where the upper teeth rest on the lower lip
        half = self.inner_half * (1.0 + sw) * (1.0 - 0.25 * m.round)
        prof = np.sqrt(_clip(1.0 - ((rx - cx) / half) ** 2))
        gap_out = (m.open * (0.36 + 0.1 * m.round) + m.tuck * 0.045) * self.mouth_w * prof
        delta = gap_out - (ks[3] - ks[2])
        d_center = float(np.interp(cx, rx, delta))
        # rounded lips push forward: seen from the front they thicken outwards
        pout = m.round * self.mouth_w * lw
        disp = np.stack([
            np.zeros_like(rx),
            -0.15 * delta * lw - 0.02 * pout,
            -0.25 * delta,
            0.75 * delta,
            0.65 * delta * lw + 0.06 * pout,
            0.6 * max(d_center, -0.5 * self.mouth_w) * jaw_w,
            np.zeros_like(rx),
        ])
        ko = np.maximum.accumulate(ks + disp, axis=0)
        # the opening samples the inner lip edges (a row inside each lip), never the
        # source's own gap: its teeth would show through the cavity's soft edge
        mid = 0.5 * (ko[2] + ko[3])
        ko9 = np.stack([ko[0], ko[1], ko[2], mid, mid, ko[3], ko[4], ko[5], ko[6]])
        top_edge = np.maximum(ks[2] - self.lip_margin, ks[1])
        bot_edge = np.minimum(ks[3] + self.lip_margin_lower, ks[4])
        ks9 = np.stack([ks[0], ks[1], top_edge, top_edge, bot_edge, bot_edge, ks[4], ks[5], ks[6]])
        yv = np.arange(my0, my1, dtype=np.float32)[:, None] + dyc
        dy = column_delta(ko9, ks9, yv)
        dx = (rx - qx)[None, :] * rig["lip_band"][:, None]
        sl = (slice(my0 - y0, my1 - y0), slice(mx0 - x0, mx1 - x0))
        map_x[sl] += dx
        map_y[sl] += dy

        # where the lips meet, the jump between the two lip edges aliases into a jagged
        # seam: remember the contact line, to soften after the remap
        self._contact = (cols, mid - dyc, _clip(1.0 - (ko[3] - ko[2]) / 2.0))
        if gap_out.max() < 1.0:
            return None
        # cavity outline in output coordinates; the upper teeth's edge stays with the skull
        inner = (rx >= cx - half) & (rx <= cx + half)
        if inner.sum() < 2:
            return None
        px = cols[inner]
        return px, ko[2][inner] - dyc, ko[3][inner] - dyc, ks[2][inner] - dyc, m.tuck

    def _photo_region(self, x0: int, y0: int, x1: int, y1: int):
        """The source photo under an output box, moved with the head's sway at the mouth."""
        dx, dy = self._sway_mouth
        ix, iy = int(round(dx)), int(round(dy))
        H, W = self.image.shape[:2]
        if y0 + iy < 0 or x0 + ix < 0 or y1 + iy > H or x1 + ix > W:
            return None
        return self.image[y0 + iy:y1 + iy, x0 + ix:x1 + ix].astype(np.float32)

    def _soften_contact(self, out: np.ndarray) -> None:
        """A vertical blur across the line where closed lips meet: a soft contact, no seam."""
        cols, mid, shut = self._contact
        keep = shut > 0.01
        if not keep.any():
            return
        c0, c1 = int(cols[keep][0]), int(cols[keep][-1]) + 1
        r0 = int(math.floor(mid[keep].min())) - 2
        r1 = int(math.ceil(mid[keep].max())) + 3
        H, W = out.shape[:2]
        if r0 < 1 or r1 > H - 1 or c0 < 0 or c1 > W:
            return
        roi = out[r0 - 1:r1 + 1, c0:c1].astype(np.float32)
        soft = cv2.GaussianBlur(roi, (1, 5), 0.0, sigmaY=0.9)[1:-1]
        rows = np.arange(r0, r1, dtype=np.float32)[:, None]
        sel = slice(int(np.searchsorted(cols, c0)), int(np.searchsorted(cols, c0)) + (c1 - c0))
        w = (_clip(1.0 - np.abs(rows - mid[sel][None, :]) / 1.8) * shut[sel][None, :])[..., None]
        base = roi[1:-1]
        out[r0:r1, c0:c1] = (base + w * (soft - base)).astype(np.uint8)

    def _eyes(self, m: Motion, map_x: np.ndarray, map_y: np.ndarray) -> None:
        if m.blink <= 0.01:
            return
        x0, y0 = self.head[0], self.head[1]
        for (ex0, ex1, ey0, ey1), (top, up, lo) in self.eyes:
            cx, cy = (ex0 + ex1) / 2, (ey0 + ey1) / 2
            dxc, dyc = self._sway_at(m, cx, cy)
            grid = np.arange(ex0, ex1, dtype=np.float32)
            qx = grid + dxc
            t, u, lw = (np.interp(qx, grid, a) for a in (top, up, lo))
            lid = u + m.blink * 0.85 * (lw - u)
            # the lid's skin comes from above the crease; crease and lashes are squeezed
            # into a thin line at the lid's edge, as on a real closed eye
            lash = 0.35 * (u - t)
            lash_out = lash * (1.0 - 0.6 * m.blink)
            ks = np.stack([t, u - lash, u, lid, lw])
            ko = np.stack([t, lid - lash_out, lid, lid, lw])
            yv = np.arange(ey0, ey1, dtype=np.float32)[:, None] + dyc
            dy = column_delta(ko, ks, yv)
            map_y[ey0 - y0:ey1 - y0, ex0 - x0:ex1 - x0] += dy
