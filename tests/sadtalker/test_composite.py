"""Compositing the sadtalker face into the video frame: the paste through the framing
transform, its colour-matched seam, and the crop modes' display.

The seam test renders the bundled avatar at 512² with full-size random weights in the
official layout and ``preprocess: full``; random weights give a face patch unrelated to the
photo, which is the hard case for a seam.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import soundfile as sf

from vcam_talker.engines.sadtalker.composite import FEATHER, Cover, Paste, face_to_frame, paste_roi
from tests.conftest import DEFAULT_AVATAR
from vcam_talker.engines.sadtalker.engine import SadTalkerEngine
from vcam_talker.stream.windows import ArrayAudio, Windower

from .official_weights import sadtalker_config


def box_distance(paste: Paste, shape: tuple[int, ...]) -> np.ndarray:
    """For every frame pixel: its distance to the pasted box's edge in face pixels, measured
    in the face's own (unrotated, unscaled) coordinates; negative outside the box."""
    H, W = shape[:2]
    inv = cv2.invertAffineTransform(paste.A)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    s = paste.size
    return np.minimum(np.minimum(u + 0.5, s - 0.5 - u), np.minimum(v + 0.5, s - 0.5 - v))


@pytest.fixture(scope="module")
def rendered(full_engine, speech_wav):
    """The bundled avatar prepared for 'full' at 512², and one rendered face (speech)."""
    engine = full_engine
    assert engine.frame_size == (512, 512) and engine.full
    av = engine.prepare(DEFAULT_AVATAR)
    faces = []
    compose = engine.compose
    engine.compose = lambda face, ctx: faces.append(face) or compose(face, ctx)
    try:
        wav, rate = sf.read(speech_wav, dtype="float32")
        win = Windower(ArrayAudio(wav, rate), engine.window_spec, engine.config.video.fps)
        engine.reset()
        frame = engine.render(win.window(40), av)
    finally:
        del engine.compose
    (face,) = faces
    return av, engine.context(av), face, frame


def test_seam_is_invisible_on_a_colour_offset_patch(rendered):
    """A colour offset added to the rendered face does not show at the seam: the mean colour
    change the paste makes just inside the box edge (the feathered band and the first 4 face
    px at full strength) minus just outside it (4 face px) stays under 2 levels per channel;
    without the colour matching it is far above. Inside, the offset is removed altogether."""
    av, ctx, face, frame = rendered
    paste = ctx.show
    assert isinstance(paste, Paste)
    base = av.image.astype(np.float64)
    d = box_distance(paste, frame.shape)
    band = FEATHER * paste.size
    inside, outside = (d >= 0) & (d < band + 4), (d < 0) & (d >= -4)
    assert inside.sum() > 5000 and outside.sum() > 5000

    def seam_step(out: np.ndarray) -> np.ndarray:
        change = out.astype(np.float64) - base
        return change[inside].mean(0) - change[outside].mean(0)

    assert np.array_equal(frame, paste(face))  # what render() showed
    offset = np.clip(face.astype(np.int16) + (30, -20, 10), 0, 255).astype(np.uint8)
    matched, plain = paste(offset), paste(offset, colour_match=False)
    step, step_plain = seam_step(matched), seam_step(plain)
    first_ring = (d >= band) & (d < band + 4)
    ring = (matched.astype(np.float64) - base)[first_ring].mean(0)
    print(f"seam step with colour matching {step.round(2)}, without {step_plain.round(2)}; "
          f"first full-strength ring alone {ring.round(2)}")
    assert np.abs(step).max() < 2.0
    assert np.abs(step_plain).max() > 10.0
    # the offset itself is gone everywhere (up to uint8 clipping of face + offset)
    interior = d > 2 * band
    drift = np.abs(matched.astype(np.float64) - paste(face))[interior].mean()
    print(f"interior change from the offset: {drift:.3f} levels")
    assert drift < 0.5
    # outside the box the photo is untouched
    assert np.array_equal(matched[d < -1], av.image[d < -1])


def test_paste_follows_a_rotated_framing():
    """The face box lives in photo pixels: a rolled framing rotates the pasted face with it."""
    image = np.full((200, 300, 3), 90, np.uint8)
    angle = 20.0
    framing = cv2.getRotationMatrix2D((100.0, 80.0), angle, 1.5)
    box = np.array([60.0, 40.0, 140.0, 120.0])  # photo pixels 60..139 × 40..119 (edges)
    A = face_to_frame(box, framing, 64)
    # the face's centre lands on the box centre (pixel-centre coordinates), mapped by the framing
    assert np.allclose(A @ [31.5, 31.5, 1], framing @ [99.5, 79.5, 1])
    # and its first pixel's centre on the box's first pixel's centre scaled by 80/64
    assert np.allclose(A @ [0, 0, 1], framing @ [60 + 0.625 - 0.5, 40 + 0.625 - 0.5, 1])
    face = np.zeros((64, 64, 3), np.uint8)
    face[:, 32:] = 255  # right half white: its edge must turn by the framing's angle
    paste = Paste(image, A, 64, colour_match=False)
    out = paste(face)
    x0, y0, w, h = paste.roi
    assert (x0, y0, w, h) == paste_roi(A, 64, (300, 200)) and w * h > 0
    # sample along the face's vertical midline, a little to each side, through the map
    for v in (20, 32, 44):
        left = np.rint(A @ [24, v, 1]).astype(int)
        right = np.rint(A @ [40, v, 1]).astype(int)
        assert out[left[1], left[0]].max() < 10 and out[right[1], right[0]].min() > 245
    # far outside the rotated box nothing changed
    assert (out[:2] == 90).all() and (out[:, :20] == 90).all() and (out[:, 180:] == 90).all()


def test_colour_matching_ignores_the_frame_outside_the_image():
    """A face box partly outside the frame compares colours only where the photo is."""
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :] = (40, 120, 200)
    A = np.array([[1.0, 0, -32.0], [0, 1.0, 20.0]])  # left half of a 64² face off-frame
    paste = Paste(image, A, 64)
    out = paste(np.full((64, 64, 3), 128, np.uint8))
    # a flat face on a flat photo: matching brings it exactly to the photo's colour
    assert np.abs(out.astype(int) - image).max() <= 1


def test_cover_keeps_the_crop_box_aspect():
    """crop modes: the square face is shown at its box's aspect (the reference resizes its
    output back to the crop box), scaled to cover the frame and centred."""
    face = np.zeros((256, 256, 3), np.uint8)
    face[..., 0] = np.arange(256)[:, None]  # red = face row
    face[..., 1] = np.arange(256)[None, :]  # green = face column
    out = Cover((100.0, 150.0), (512, 512))(face)  # a tall box: 512 wide, 768 tall, middle rows
    assert out.shape == (512, 512, 3)
    # rows: 768/256 = 3 frame px per face row, 128 rows cut at the top; columns: 2 px each
    assert abs(int(out[0, 256, 0]) - round((128 + 0.5) / 3 - 0.5)) <= 1
    assert abs(int(out[511, 256, 0]) - round((128 + 511 + 0.5) / 3 - 0.5)) <= 1
    assert abs(int(out[256, 511, 1]) - 255) <= 1 and int(out[256, 0, 1]) == 0
    square = Cover((200.0, 200.0), (640, 480))(face)
    assert square.shape == (480, 640, 3)


@pytest.fixture(scope="module")
def reduced_dir(tmp_path_factory):
    from .reduced_weights import write_reduced_weights

    return write_reduced_weights(tmp_path_factory.mktemp("reduced_weights"))


@pytest.mark.parametrize("mode", ["crop", "extcrop", "full", "extfull", "resize"])
def test_every_mode_prepares_and_renders(mode, reduced_dir, tmp_path, monkeypatch, speech_wav):
    """Each preprocess mode end to end (reduced-width random weights, 128² face): the region
    its source covers, the MappingNet it drives, and where its face lands in the frame."""
    monkeypatch.setenv("VCAM_TALKER_CACHE", str(tmp_path / "cache"))
    engine = SadTalkerEngine(sadtalker_config(weights_dir=str(reduced_dir), preprocess=mode, device="cpu"))
    full = mode in ("full", "extfull")
    assert engine.full == full and engine.stages.full == full  # coeff-73 MappingNet for the full modes
    av = engine.prepare(DEFAULT_AVATAR)
    x0, y0, x1, y1 = av.data["box"]
    w, h = x1 - x0, y1 - y0
    if mode == "resize":
        assert (x0, y0, x1, y1) == (0, 0, 512, 512)  # the bundled photo is 512²
    elif mode.startswith("ext"):
        assert 210 < w < 230 and 210 < h < 230  # the padded crop box (clipped at the top)
    else:
        assert 175 < w < 190 and abs(w - h) < 1e-9  # the oriented square
    wav, rate = sf.read(speech_wav, dtype="float32")
    win = Windower(ArrayAudio(wav, rate), engine.window_spec, engine.config.video.fps)
    frame = engine.render(win.window(30), av)
    assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
    ctx = engine.context(av)
    if full:
        assert isinstance(ctx.show, Paste)
        px, py, pw, ph = (int(v) for v in av.data["paste_box"])
        outside = np.ones(frame.shape[:2], bool)
        outside[py : py + ph, px : px + pw] = False
        assert np.array_equal(frame[outside], av.image[outside])
        assert not np.array_equal(frame[~outside], av.image[~outside])
    else:
        assert isinstance(ctx.show, Cover)
        bw, bh = ctx.show.scaled
        assert abs(bw / bh - w / h) < 0.01  # the crop box's aspect
