"""The command line: help texts, prepare's report, device listing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vcam_talker.devices import list_video_devices
from tests.conftest import DEFAULT_AVATAR, ROOT

COMMANDS = ["render", "prepare", "check-config", "devices"]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vcam_talker", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=env)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    r = cli(cmd, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith(f"usage: vcam-talker {cmd}")


def test_top_level_help_lists_commands():
    out = cli("--help").stdout
    for cmd in COMMANDS:
        assert cmd in out


def test_prepare_reports_face_landmarks_and_timing(cache_dir, monkeypatch):
    import os

    env = dict(os.environ, VCAM_TALKER_CACHE=str(cache_dir))
    r = cli("prepare", str(DEFAULT_AVATAR), env=env)
    assert r.returncode == 0, r.stderr
    assert "prepared in" in r.stdout and "face box in frame" in r.stdout and "68 landmarks" in r.stdout
    assert "2 faces found; using the largest" in r.stdout
    again = cli("prepare", str(DEFAULT_AVATAR), "--json", env=env)
    data = json.loads(again.stdout)
    assert data["from_cache"] is True
    assert len(data["landmarks"]) == 68 and len(data["face_box"]) == 4


def test_prepare_bad_image_one_line(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"\xff\xd8\xff garbage")
    r = cli("prepare", str(p))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "vcam-talker: error:" in r.stderr


def test_bad_size_override_names_the_option():
    r = cli("render", "--size", "big")
    assert r.returncode == 1
    assert "--size: must be WIDTHxHEIGHT" in r.stderr


def test_video_devices_recognise_v4l2loopback(tmp_path):
    # the same sysfs layout the kernel exposes: /sys/class/video4linux/videoN/{name,device/driver}
    drivers = tmp_path / "drivers"
    (drivers / "v4l2loopback").mkdir(parents=True)
    (drivers / "uvcvideo").mkdir()
    for n, name, drv in ((0, "Integrated Camera", "uvcvideo"), (10, "VCam Talker", "v4l2loopback")):
        d = tmp_path / "class" / f"video{n}"
        (d / "device").mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "device" / "driver").symlink_to(drivers / drv)
    devs = list_video_devices(tmp_path / "class")
    assert devs == [{"path": "/dev/video0", "name": "Integrated Camera", "loopback": False},
                    {"path": "/dev/video10", "name": "VCam Talker", "loopback": True}]


def test_devices_command_explains_missing_loopback():
    r = cli("devices")
    assert "video devices (v4l2):" in r.stdout
    if not any(d["loopback"] for d in list_video_devices()):
        assert "modprobe v4l2loopback" in r.stdout and "exclusive_caps=1" in r.stdout
