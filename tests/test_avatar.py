"""Avatar preparation on real images: detection, framing, caching and bad inputs."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from vcam_talker.config import Config
from vcam_talker.engines.classic.engine import ClassicEngine
from vcam_talker.errors import AvatarError
from tests.conftest import DEFAULT_AVATAR


@pytest.fixture()
def engine(cache_dir):
    return ClassicEngine(Config())


def test_default_avatar_largest_face_and_framing(engine):
    av = engine.prepare(DEFAULT_AVATAR)
    assert av.image.shape == (512, 512, 3)
    assert av.landmarks.shape == (68, 2)
    assert (av.landmarks >= 0).all() and (av.landmarks < 512).all()
    # the astronaut photo also holds a weak false detection on the suit; the face wins
    assert av.info["faces"] == 2
    assert any("using the largest" in n for n in av.info["notes"])
    assert av.info["source_face_box"] == [175.0, 76.0, 265.0, 166.0]
    # framing: the detector box is face_scale of the frame height
    box = av.info["source_face_box"]
    assert (box[3] - box[1]) * av.info["scale"] == pytest.approx(0.35 * 512, rel=0.02)
    # its mouth is open in a smile: the inner lips are apart in the source
    assert (av.landmarks[66, 1] - av.landmarks[62, 1]) > 4


def test_second_prepare_comes_from_cache_without_detection(engine, cache_dir):
    first = engine.prepare(DEFAULT_AVATAR)
    assert not first.from_cache
    files = list(cache_dir.rglob("*.npz"))
    assert len(files) == 1 and first.sha256[:24] in files[0].name

    fresh = ClassicEngine(Config())

    def no_detector():
        raise AssertionError("a cached prepare must not load the landmark detector")

    fresh.detector = no_detector
    second = fresh.prepare(DEFAULT_AVATAR)
    assert second.from_cache
    np.testing.assert_array_equal(second.image, first.image)
    np.testing.assert_array_equal(second.landmarks, first.landmarks)
    assert second.data.keys() == first.data.keys()


def test_corrupt_cache_is_rebuilt(engine, cache_dir, caplog):
    engine.prepare(DEFAULT_AVATAR)
    (f,) = cache_dir.rglob("*.npz")
    f.write_bytes(b"not a zip file at all")
    with caplog.at_level(logging.WARNING):
        av = engine.prepare(DEFAULT_AVATAR)
    assert not av.from_cache
    assert "unusable" in caplog.text and "rebuilding" in caplog.text
    assert engine.prepare(DEFAULT_AVATAR).from_cache


def test_cache_from_an_older_version_is_rebuilt(engine, cache_dir, monkeypatch, caplog):
    from vcam_talker.avatar import prepared

    engine.prepare(DEFAULT_AVATAR)
    (old,) = cache_dir.rglob("*.npz")
    monkeypatch.setattr(prepared, "CACHE_VERSION", prepared.CACHE_VERSION + 1)
    # an old file under the new name (e.g. copied by hand) is read, recognised and replaced
    new_name = old.with_name(old.name.replace(f"-v{prepared.CACHE_VERSION - 1}.npz",
                                              f"-v{prepared.CACHE_VERSION}.npz"))
    new_name.write_bytes(old.read_bytes())
    with caplog.at_level(logging.WARNING):
        av = engine.prepare(DEFAULT_AVATAR)
    assert not av.from_cache and "rebuilding" in caplog.text
    assert engine.prepare(DEFAULT_AVATAR).from_cache


def test_full_disk_runs_uncached(tmp_path, monkeypatch, caplog):
    """A real full filesystem: a 16 KiB tmpfs (needs root, as the test set-up has)."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root); test_unwritable_cache_runs_uncached covers the path")
    try:
        monkeypatch.setenv("VCAM_TALKER_CACHE", str(mnt))
        with caplog.at_level(logging.WARNING):
            av = ClassicEngine(Config()).prepare(DEFAULT_AVATAR)
        assert av.landmarks.shape == (68, 2) and av.info["cache_file"] is None
        assert "running uncached" in caplog.text and "No space left" in caplog.text
        assert not any(mnt.rglob("*.npz")) and not any(mnt.rglob("*.tmp*"))  # no partial file left
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_unwritable_cache_runs_uncached(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("VCAM_TALKER_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING):
        av = ClassicEngine(Config()).prepare(DEFAULT_AVATAR)
    assert av.landmarks.shape == (68, 2)
    assert av.info["cache_file"] is None
    assert "running uncached" in caplog.text


def _default_rgb() -> np.ndarray:
    return np.asarray(Image.open(DEFAULT_AVATAR).convert("RGB"))


def test_grayscale_and_rgba(engine, tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(_default_rgb()).convert("L").save(gray)
    av = engine.prepare(gray)
    assert av.image.shape == (512, 512, 3)
    assert "grayscale image converted to RGB" in av.info["notes"]

    rgba = tmp_path / "rgba.png"
    a = np.dstack([_default_rgb(), np.full((512, 512), 255, np.uint8)])
    a[:40, :, 3] = 0  # transparent band at the top
    Image.fromarray(a, "RGBA").save(rgba)
    av = engine.prepare(rgba)
    assert "composited transparency on white" in av.info["notes"]


def test_exif_rotated_photo_is_turned_upright(engine, tmp_path):
    # a camera stores the pixels sideways and says so in EXIF (6 = rotate 90° CW to view);
    # dlib's frontal detector finds no sideways face, so this only passes if we rotate
    sideways = np.ascontiguousarray(np.rot90(_default_rgb(), k=1))
    p = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(sideways).save(p, exif=exif, quality=95)
    av = engine.prepare(p)
    assert "applied EXIF orientation 6" in av.info["notes"]
    assert av.landmarks[8, 1] > av.landmarks[27, 1]  # chin below the nose bridge: upright


def test_huge_image_is_downscaled(engine, tmp_path):
    p = tmp_path / "huge.png"
    cv2.imwrite(str(p), cv2.resize(cv2.imread(str(DEFAULT_AVATAR)), (4096, 4096), interpolation=cv2.INTER_CUBIC))
    av = engine.prepare(p)
    assert av.info["original_size"] == [4096, 4096]
    assert any(n.startswith("downscaled 4096x4096 to 2048x2048") for n in av.info["notes"])
    assert av.image.shape == (512, 512, 3)


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_text("this is not an image"), "not an image file"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50), "not an image file"),
    (lambda p: Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(p, "PNG"), "no face found"),
    (lambda p: Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(p, "PNG"), "too small for a face"),
    (lambda p: None, "avatar image not found"),
    (lambda p: p.mkdir(), "is a folder"),
])
def test_bad_images_give_one_line_errors(engine, tmp_path, make, message):
    p = tmp_path / "avatar.png"
    make(p)
    with pytest.raises(AvatarError) as e:
        engine.prepare(p)
    assert message in str(e.value)
    assert str(p) in str(e.value)
    assert "\n" not in str(e.value)
