"""The sadtalker source image comes from the photo, as the reference cuts it.

- A large photo gives the networks a crop sampled from the photo's own pixels (pixel-equal to
  the reference crop of the photo), not from the framed, downscaled video image.
- Landmarks are re-detected on the source crop for the 3DMM alignment, with the mapped ones
  (and a note) when no face is found there.
- ``extcrop`` / ``resize`` cut the reference's regions.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import DEFAULT_AVATAR
from vcam_talker.avatar.image import load_image
from vcam_talker.avatar.landmarks import LandmarkDetector
from vcam_talker.engines.sadtalker.preprocess import crop_face, crop_geometry, resize_source
from vcam_talker.avatar.landmarks import Face
from vcam_talker.engines.sadtalker.source import redetect, source_crop


def detail(rgb: np.ndarray) -> float:
    """Mean |Laplacian| of the grey image: how much pixel-scale detail there is."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())


@pytest.fixture(scope="module")
def detector():
    return LandmarkDetector("dlib")


@pytest.fixture(scope="module")
def photo(detector):
    rgb = np.asarray(Image.open(DEFAULT_AVATAR).convert("RGB"))
    return rgb, detector.detect(rgb)[0].landmarks


def test_large_photo_source_is_the_photos_own_pixels(full_engine, tmp_path):
    """The bundled portrait at 4× (2048²) with 1-px grain: the engine's 256² source is the
    reference's crop of that photo, pixel for pixel, made from ~730 px of it. The old way, a
    crop of the 512² framed image, sees ~340 px of a downscaled copy: it differs by tens of
    levels and carries far less pixel-scale detail."""
    rgb = np.asarray(Image.open(DEFAULT_AVATAR).convert("RGB"))
    big = cv2.resize(rgb, (2048, 2048), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    grain = np.random.default_rng(0).normal(0, 16, big.shape[:2])[..., None]
    path = tmp_path / "big.png"
    Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8)).save(path, compress_level=1)

    av = full_engine.prepare(path)
    src = av.data["source"]
    assert av.info["source_landmarks"] == "re-detected" and av.photo is None
    # the reference's crop of the photo as loaded, from the photo's own landmarks
    photo = load_image(path, full_engine.config.avatar.max_side).rgb
    assert photo.shape == (2048, 2048, 3)
    lm = full_engine.detector().detect(photo)[0].landmarks
    ref = resize_source(crop_face(photo, crop_geometry(lm, (2048, 2048))), 256)
    assert np.array_equal(src, ref)
    x0, y0, x1, y1 = av.data["box"]
    assert x1 - x0 > 700 and y1 - y0 > 700  # photo pixels behind the 256² source
    # the old way: the same crop rule on the framed image
    old = source_crop(av.image, av.landmarks, 256)
    bx0, by0, bx1, by1 = old["box"]
    diff = np.abs(old["source"].astype(np.int16) - ref).mean()
    print(f"source from {x1 - x0:.0f} px of the photo; old way from {bx1 - bx0:.0f} px of the frame; "
          f"mean |old - reference| {diff:.1f} levels; detail {detail(src):.1f} vs old {detail(old['source']):.1f}")
    assert bx1 - bx0 < 400
    assert diff > 10
    assert detail(src) > 1.4 * detail(old["source"])


def test_source_landmarks_fall_back_to_the_mapped_ones(full_engine, tmp_path, monkeypatch):
    """No face found on the crop: the 3DMM fit uses the photo's landmarks mapped into the
    crop, and prepare says so in its notes."""
    rgb = np.asarray(Image.open(DEFAULT_AVATAR).convert("RGB"))
    path = tmp_path / "mirrored.png"
    Image.fromarray(np.ascontiguousarray(rgb[:, ::-1])).save(path)  # not in the engine's cache yet
    real = full_engine.detector()
    size = full_engine.size

    class NoFaceOnTheCrop:
        method = real.method

        def detect(self, image):
            return [] if image.shape[:2] == (size, size) else real.detect(image)

    monkeypatch.setattr(full_engine, "detector", lambda: NoFaceOnTheCrop())
    av = full_engine.prepare(path)
    assert av.info["source_landmarks"] == "mapped"
    assert any("no face re-detected" in n for n in av.info["notes"])
    mirrored = np.ascontiguousarray(rgb[:, ::-1])
    mapped = source_crop(mirrored, real.detect(mirrored)[0].landmarks, size, "full")["landmarks"]
    np.testing.assert_allclose(av.data["source_landmarks"], mapped, atol=1e-4)
    # re-detection, when it works, moves them by a little (a different detector input)
    found = real.detect(av.data["source"])[0].landmarks
    shift = np.abs(found - mapped).max(1)
    assert 0 < np.median(shift) < 3


def test_modes_cut_the_reference_regions(photo):
    """crop/full: the oriented square; extcrop/extfull: the padded crop box; resize: all of it."""
    rgb, lm = photo
    h, w = rgb.shape[:2]
    g = crop_geometry(lm, (w, h))
    crop = source_crop(rgb, lm, 256, "crop")
    assert np.array_equal(crop["source"], resize_source(crop_face(rgb, g), 256))
    ox, oy = g.origin
    cw, ch = g.size
    assert tuple(crop["box"]) == (ox, oy, ox + cw, oy + ch)

    ext = source_crop(rgb, lm, 256, "extcrop")
    clx, cly, crx, cry = g.crop_box
    assert np.array_equal(ext["source"], cv2.resize(rgb[cly:cry, clx:crx], (256, 256)))
    assert tuple(ext["box"]) == (clx, cly, crx, cry)
    assert (crx - clx) * (cry - cly) > 1.3 * cw * ch  # the 10% border around the square
    assert np.array_equal(source_crop(rgb, lm, 256, "extfull")["source"], ext["source"])

    whole = source_crop(rgb, lm, 256, "resize")
    assert np.array_equal(whole["source"], cv2.resize(rgb, (256, 256)))
    assert tuple(whole["box"]) == (0, 0, w, h)
    # landmarks follow each region: the nose tip is in the same photo place for all three
    for r in (crop, ext, whole):
        x0, y0, x1, y1 = r["box"]
        back = r["landmarks"][30] * ((x1 - x0) / 256, (y1 - y0) / 256) + (x0, y0)
        np.testing.assert_allclose(back, lm[30], atol=1e-3)


def test_redetect_takes_the_face_at_the_mapped_landmarks():
    """Of the faces found on the crop, the one where the photo's landmarks map to; none
    (fall back to the mapped ones) when the only face found is elsewhere."""
    mapped = np.full((68, 2), 128.0, np.float32) + np.random.default_rng(1).normal(0, 20, (68, 2)).astype(np.float32)

    class Found:
        def __init__(self, *offsets):
            self.faces = [Face((0, 0, 1, 1), 1.0, mapped + off) for off in offsets]

        def detect(self, image):
            return self.faces

    src = np.zeros((256, 256, 3), np.uint8)
    got = redetect(src, mapped, Found((90.0, 0.0), (3.0, -2.0)))
    np.testing.assert_allclose(got, mapped + (3.0, -2.0))
    assert redetect(src, mapped, Found((90.0, 0.0))) is None  # a false detection off the face
    assert redetect(src, mapped, Found()) is None and redetect(src, mapped, None) is None
