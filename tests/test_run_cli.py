"""`vcam-talker run --demo` as a real process, the way the README's first command runs it:
no v4l2loopback here, so it says so in one line and records to an mp4; it creates the
virtual mic; it stops cleanly and quickly on SIGTERM and SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import ROOT


def start(tmp_path, pulse_server, record):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"sinks": {"fallback_record": str(record)}, "status": {"interval_s": 1.0}}))
    env = dict(pulse_server.env, VCAM_TALKER_CACHE=str(tmp_path / "cache"))
    return subprocess.Popen([sys.executable, "-m", "vcam_talker", "run", "--demo", "--config", str(cfg)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, needle, timeout=30.0) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen in: {lines}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_demo_records_without_camera_and_stops_fast(pulse_server, tmp_path, sig):
    record = tmp_path / "live.mp4"
    proc = start(tmp_path, pulse_server, record)
    try:
        lines = wait_for_line(proc, "| repeated")  # the first status line: frames are flowing
        time.sleep(2.0)
        t = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=5)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
    rest = proc.stderr.read().splitlines()
    assert proc.returncode == 0, rest
    print(f"stopped {took:.2f} s after {sig.name}")
    assert took < 2.0
    cam = [ln for ln in lines if "virtual camera unavailable" in ln]
    assert len(cam) == 1 and "modprobe v4l2loopback" in cam[0] and "exclusive_caps=1" in cam[0]
    assert any("recording to" in ln for ln in lines)
    # the virtual mic exists, and the daemon played into it
    assert "vcam_talker_mic" in pulse_server.pactl("list", "short", "sinks")
    status = [ln for ln in lines + rest if "| repeated" in ln][-1]
    assert "A/V offset n/a" not in status, status
    info = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(record)],
                                     capture_output=True, text=True, check=True).stdout)
    kinds = sorted(s["codec_type"] for s in info["streams"])
    assert kinds == ["audio", "video"]
    undo = subprocess.run([sys.executable, "-m", "vcam_talker", "setup-audio", "--undo"], cwd=ROOT,
                          env=pulse_server.env, capture_output=True, text=True)
    assert undo.returncode == 0 and "vcam_talker_mic" not in pulse_server.pactl("list", "short", "sinks")
