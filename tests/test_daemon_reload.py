"""Hot reload, signals, sd_notify and bad input against the real daemon process (issue 4).

Each test runs `vcam-talker run --config <tmp>/config.yaml` with the recording camera as a
plugin and the bundled demo speech as input, edits the config the way users do, and
checks the log, the status endpoint and the frames the camera received."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import DEFAULT_AVATAR
from tests.daemon_proc import DaemonProc, base_config, free_port, write_atomic

FPS = 25


def check_frames_continuous(times: np.ndarray, frames: np.ndarray) -> None:
    """No gap above two frame periods, and no black or torn frame."""
    gaps = np.diff(times)
    assert gaps.max() <= 2.0 / FPS, f"frame gap {gaps.max() * 1e3:.0f} ms at frame {gaps.argmax()} of {len(gaps)}"
    means = frames.reshape(len(frames), -1).mean(1)
    assert means.min() > 0.5 * np.median(means), "a dark frame was sent"


@pytest.fixture
def second_avatar(tmp_path):
    """A different face: the default portrait mirrored and tinted blue."""
    img = np.asarray(Image.open(DEFAULT_AVATAR).convert("RGB"))[:, ::-1].astype(np.float32)
    img[..., 0] *= 0.6
    img[..., 2] = np.minimum(255, img[..., 2] * 1.3 + 20)
    path = tmp_path / "second.png"
    Image.fromarray(img.astype(np.uint8)).save(path)
    return path


def test_avatar_swap_while_running(tmp_path, second_avatar):
    cfg = base_config(free_port())
    with DaemonProc(tmp_path, cfg) as d:
        d.started()
        time.sleep(1.0)
        cfg["avatar"] = {"image": str(second_avatar)}
        t_edit = time.monotonic()
        write_atomic(d.config_path, cfg)
        t_done, line = d.wait_for("reloaded (file changed)", since=t_edit)
        assert "avatar" in line
        time.sleep(1.5)
        took = d.terminate()
    times, frames = d.frames()
    check_frames_continuous(times, frames)
    f = frames.astype(np.float32)
    old = np.median(f[times < t_edit - 0.2], axis=0)
    new = np.median(f[times > times[-1] - 1.0], axis=0)
    is_new = np.abs(f - new).mean((1, 2, 3)) < np.abs(f - old).mean((1, 2, 3))
    switch = int(np.argmax(is_new))
    # one clean switch: old face until a frame boundary, the new face from then on
    assert not is_new[:switch].any() and is_new[switch:].all()
    # frames already rendered with the old face still go out: the pipeline delay (~0.1 s)
    assert t_edit < times[switch] < t_done + 0.5
    print(f"\navatar swap: new face on camera {times[switch] - t_edit:.2f} s after the edit; "
          f"largest frame gap {np.diff(times).max() * 1e3:.0f} ms; stopped in {took:.2f} s")
    assert took < 2.0


def test_invalid_config_and_bad_avatars_keep_the_daemon_running(tmp_path):
    cfg = base_config(free_port())
    no_face = tmp_path / "no_face.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))).save(no_face)
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture\n")
    weights = tmp_path / "weights"  # a download that stopped after 1000 bytes
    weights.mkdir()
    (weights / "SadTalker_V0.0.2_256.safetensors").write_bytes(os.urandom(1000))
    bad = [
        ({"video": {"fps": 0}}, "video.fps: must be 1..60, got 0"),
        ({"video": {"width": "wide"}}, "video.width"),
        ({"audio": {"trim_ms": [1, 2]}}, "audio.trim_ms"),
        ({"avatar": {"imgae": "x.png"}}, "did you mean 'image'"),
        ({"avatar": {"image": str(no_face)}}, "no face"),
        ({"avatar": {"image": str(not_image)}}, "notes.png"),
        ({"engine": {"name": "sadtalker", "sadtalker": {"weights_dir": str(weights)}}},
         "SadTalker_V0.0.2_256.safetensors (incomplete: 1000 bytes)"),
    ]
    with DaemonProc(tmp_path, cfg) as d:
        d.started()
        for edit, needle in bad:
            new = yaml.safe_load(yaml.safe_dump(cfg))
            for k, v in edit.items():
                new.setdefault(k, {}).update(v)
            t = time.monotonic()
            before = d.status()["frames_emitted"]
            write_atomic(d.config_path, new)
            _, line = d.wait_for("refused, keeping the running", since=t)
            assert needle in line, line
            assert "\n" not in line
            time.sleep(0.3)
            st = d.status()
            assert d.alive() and st["frames_emitted"] > before and st["avatar"] == str(DEFAULT_AVATAR)
            assert st["engine"] == "classic"
        assert d.status()["reload_errors"] == len(bad)
        # a good edit after all that still applies
        t = time.monotonic()
        cfg["audio"]["trim_ms"] = 20
        write_atomic(d.config_path, cfg)
        _, line = d.wait_for("reloaded (file changed)", since=t)
        assert "audio trim" in line or "no change that needs a restart" in line
    times, frames = d.frames()
    check_frames_continuous(times, frames)


def test_one_reload_per_save_and_sighup(tmp_path):
    cfg = base_config(free_port())
    with DaemonProc(tmp_path, cfg) as d:
        d.started()
        # 1. atomic rename
        t = time.monotonic()
        cfg["engine"]["classic"]["mouth_gain"] = 1.2
        write_atomic(d.config_path, cfg)
        d.wait_for("reloaded (file changed)", since=t)
        time.sleep(1.5)
        assert d.count("reloaded (", since=t) == 1
        # 2. written in place, in several partial writes with pauses
        t = time.monotonic()
        cfg["engine"]["classic"]["mouth_gain"] = 1.4
        text = yaml.safe_dump(cfg)
        with open(d.config_path, "w") as fh:
            for i in range(0, len(text), len(text) // 4 + 1):
                fh.write(text[i:i + len(text) // 4 + 1])
                fh.flush()
                os.fsync(fh.fileno())
                time.sleep(0.1)
        _, line = d.wait_for("reloaded (file changed)", since=t)
        assert "engine tuning (live)" in line
        time.sleep(1.5)
        assert d.count("reloaded (", since=t) == 1 and d.count("refused", since=t) == 0
        # 3. SIGHUP, as systemctl reload sends it
        t = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("reloaded (SIGHUP)", since=t)
        # `vcam-talker status` asks the running daemon over its loopback endpoint
        r = subprocess.run([sys.executable, "-m", "vcam_talker", "status", "--json", "--address",
                            f"127.0.0.1:{d.port}"], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["reloads"] == 3 and st["engine"] == "classic" and st["fps"] > 0
        took = d.terminate()
        assert d.proc.returncode == 0 and took < 2.0
        print(f"\nSIGTERM: exited in {took:.2f} s")


def test_stage_restart_on_size_change(tmp_path):
    """A new camera size restarts the video stage and reopens the camera; a live field
    restarts nothing."""
    cfg = base_config(free_port())
    with DaemonProc(tmp_path, cfg) as d:
        d.started()
        t = time.monotonic()
        cfg["video"] = {"width": 320, "height": 240}
        write_atomic(d.config_path, cfg)
        _, line = d.wait_for("reloaded (file changed)", since=t)
        assert "video (camera reopened)" in line
        time.sleep(0.5)
        n0 = d.status()["frames_emitted"]
        time.sleep(1.0)
        st = d.status()
        assert st["sinks"] == {"virtualcam": "ok"} and st["frames_emitted"] - n0 >= 0.9 * FPS
        # a new frame rate at the same size keeps the camera open
        t = time.monotonic()
        cfg["video"]["fps"] = 20
        write_atomic(d.config_path, cfg)
        _, line = d.wait_for("reloaded (file changed)", since=t)
        assert "video" in line and "camera reopened" not in line
        time.sleep(1.0)
    times, frames = d.frames()  # the camera opened at the new size
    assert frames.shape[1:] == (240 // 4, 320 // 4, 3)
    gaps = np.diff(times)
    assert gaps.max() <= 2.0 / 20


def test_sd_notify_ready_watchdog_reloading(tmp_path):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    got: list[tuple[float, str]] = []

    def drain(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                got.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                pass

    cfg = base_config(free_port())
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}  # ping every 0.5 s
    try:
        with DaemonProc(tmp_path, cfg, extra_env=env) as d:
            drain(8.0)
            d.proc.send_signal(signal.SIGHUP)
            drain(1.5)
            d.terminate()
            drain(0.5)
    finally:
        sock.close()
    msgs = [m for _, m in got]
    ready = [i for i, m in enumerate(msgs) if m.startswith("READY=1")]
    dog = [t for t, m in got if m == "WATCHDOG=1"]
    assert ready, msgs
    first_frame = d.wait_for("running: engine")[0]
    assert got[ready[0]][0] >= first_frame - 0.5  # READY after start, not at import
    assert len(dog) >= 8 and np.diff(dog).max() < 1.0, np.diff(dog)
    reloading = [i for i, m in enumerate(msgs) if m.startswith("RELOADING=1")]
    assert reloading and any(r > reloading[0] for r in ready)
    assert "STOPPING=1" in msgs[-1]


def test_engine_exceptions_repeat_last_frame(tmp_path):
    fault = tmp_path / "fault"
    cfg = base_config(free_port())
    with DaemonProc(tmp_path, cfg, plugins="tests.recording_cam,tests.fault_plugin",
                    extra_env={"VCAM_FAULT_FILE": str(fault)}) as d:
        d.started()
        time.sleep(1.0)
        fault.touch()
        t0 = time.monotonic()
        time.sleep(2.0)
        fault.unlink()
        t1 = time.monotonic()
        time.sleep(2.0)
        st = d.status()
        d.terminate()
    assert st["engine_errors"] >= 40 and st["engine"] == "classic"
    assert d.count("engine failed on a frame") == 1  # logged once, then counted
    times, frames = d.frames()
    check_frames_continuous(times, frames)
    f = frames.reshape(len(frames), -1).astype(np.float32)
    during = f[(times > t0 + 0.5) & (times < t1)]
    after = f[times > t1 + 0.5]
    # while the engine fails, the last good frame is repeated; afterwards it animates again
    assert np.abs(np.diff(during, axis=0)).max() == 0
    assert np.abs(np.diff(after, axis=0)).max() > 0


def test_failing_engine_falls_back_to_classic(caplog):
    """After FALLBACK_AFTER consecutive failures of a non-classic engine, the daemon swaps
    in the classic engine on the same avatar; the camera never stops."""
    from tests.recording_cam import RecordingCamera, register
    from vcam_talker.config import from_dict
    from vcam_talker.daemon import FALLBACK_AFTER, Daemon
    from vcam_talker.engines.classic.engine import ClassicEngine

    class BrokenEngine(ClassicEngine):
        name = "broken"

        def render(self, window, avatar):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    register()
    cfg = from_dict(base_config(0, status={"http": ""}))
    daemon = Daemon(cfg, engine=BrokenEngine(cfg))
    with caplog.at_level("INFO", logger="vcam_talker"):
        daemon.start()
        try:
            deadline = time.monotonic() + 10
            while daemon.status()["engine"] != "classic" and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)
            st = daemon.status()
        finally:
            daemon.stop()
    assert st["engine"] == "classic" and st["engine_errors"] >= FALLBACK_AFTER
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("falling back to the classic engine" in m for m in msgs) == 1
    assert sum("engine failed on a frame" in m for m in msgs) == 1
    times, frames = RecordingCamera.instances[-1].snapshot()
    check_frames_continuous(times, frames)
    assert np.abs(np.diff(frames[-20:].astype(np.int16), axis=0)).max() > 0  # animating again


def test_editing_the_avatar_image_itself_reloads(tmp_path, second_avatar):
    """Saving over the avatar file (same path, new picture) is a swap too."""
    import shutil

    face = tmp_path / "me.png"
    shutil.copy(DEFAULT_AVATAR, face)
    cfg = base_config(free_port(), avatar={"image": str(face)})
    with DaemonProc(tmp_path, cfg) as d:
        d.started()
        time.sleep(0.5)
        t = time.monotonic()
        tmp = tmp_path / "me.png.tmp"
        shutil.copy(second_avatar, tmp)
        os.replace(tmp, face)  # how image editors save
        _, line = d.wait_for("reloaded (file changed)", since=t)
        assert "avatar" in line
        time.sleep(1.0)
        assert d.count("reloaded (", since=t) == 1
        d.terminate()
    times, frames = d.frames()
    check_frames_continuous(times, frames)
    f = frames.astype(np.float32)
    # the picture changed: the last second differs from the first one far more than the
    # talking mouth alone could make it
    first, last = np.median(f[times < t], axis=0), np.median(f[times > times[-1] - 0.8], axis=0)
    assert np.abs(first - last).mean() > 10


def test_fallback_rewindows_for_the_classic_engine():
    """The fallback swaps in an engine with other windows: the windower, delay estimator and
    pacer are rebuilt for them (issue 9), and frames flow on."""
    from tests.recording_cam import RecordingCamera, register
    from vcam_talker.config import from_dict
    from vcam_talker.daemon import Daemon
    from vcam_talker.engines.classic.engine import ClassicEngine
    from vcam_talker.frames import WindowSpec

    class LongWindowBrokenEngine(ClassicEngine):
        name = "broken"

        @property
        def window_spec(self):
            return WindowSpec(16000, 0.2, 0.3)

        def render(self, window, avatar):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    register()
    cfg = from_dict(base_config(0, status={"http": ""}))
    daemon = Daemon(cfg, engine=LongWindowBrokenEngine(cfg))
    daemon.start()
    try:
        assert daemon.windower.spec == WindowSpec(16000, 0.2, 0.3)
        deadline = time.monotonic() + 10
        while daemon.status()["engine"] != "classic" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        spec = daemon.active.engine.window_spec
        assert daemon.windower.spec == spec and daemon.pacer.windower is daemon.windower
        assert daemon.delay.floor == spec.after_s
        rendered = daemon.status()["frames_rendered"]
        time.sleep(0.5)
        assert daemon.status()["frames_rendered"] > rendered
    finally:
        daemon.stop()
    times, frames = RecordingCamera.instances[-1].snapshot()
    check_frames_continuous(times, frames)


def test_editing_status_http_moves_the_endpoint(tmp_path):
    """status.http is rebound on reload: the old port closes, the new one answers."""
    import urllib.error
    import urllib.request

    cfg = base_config(free_port())
    with DaemonProc(tmp_path, cfg) as d:
        d.started()
        old_port = d.port
        new_port = free_port()
        cfg["status"]["http"] = f"127.0.0.1:{new_port}"
        t_edit = time.monotonic()
        write_atomic(d.config_path, cfg)
        _, line = d.wait_for("reloaded (file changed)", since=t_edit)
        assert "status endpoint" in line
        d.port = new_port
        st = d.status()
        assert st["frames_emitted"] > 0
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{old_port}/status", timeout=2)
        d.terminate()


def test_reload_errors_of_any_kind_and_a_full_queue_lose_nothing(tmp_path, monkeypatch, caplog):
    """A reload whose engine raises something other than our own errors is refused and the
    half-built engine closed; a fallback wanted while the control queue is full of reloads
    still happens (it is a flag, not a queued request), and the overflowing reload too."""
    from tests.recording_cam import RecordingCamera, register
    from vcam_talker import reloads
    from vcam_talker.config import from_dict
    from vcam_talker.daemon import Daemon
    from vcam_talker.engines.classic.engine import ClassicEngine

    class BrokenEngine(ClassicEngine):
        name = "broken"

        def render(self, window, avatar):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    built = []

    class PrepareFails(ClassicEngine):
        def prepare(self, image_path):
            if not built[1:]:  # the first keeps the control thread busy while errors pile up
                time.sleep(2.0)
            raise RuntimeError("a library bug, not a VcamError")

        def close(self):
            self.closed = True

    def create_engine(cfg):
        if cfg.engine.classic.lookahead_ms == 50:  # the reloads' config
            built.append(PrepareFails(cfg))
            return built[-1]
        return ClassicEngine(cfg)  # the fallback's

    monkeypatch.setattr(reloads, "create_engine", create_engine)
    register()
    base = base_config(0, status={"http": ""})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**base, "engine": {"classic": {"sway": 0.0, "lookahead_ms": 50}}}))
    cfg = from_dict(base)
    daemon = Daemon(cfg, engine=BrokenEngine(cfg), config_path=path)
    with caplog.at_level("INFO", logger="vcam_talker"):
        for i in range(16):  # the queue full before the control thread starts
            daemon.request_reload(f"burst {i}")
        daemon.start()
        try:
            for i in range(16, 24):  # and full again while the first reload blocks
                daemon.request_reload(f"burst {i}")
            deadline = time.monotonic() + 20
            while daemon.status()["engine"] != "classic" and time.monotonic() < deadline:
                time.sleep(0.1)
            st = daemon.status()
            time.sleep(1.0)
        finally:
            daemon.stop()
    msgs = [r.getMessage() for r in caplog.records]
    assert st["engine"] == "classic", st
    assert any("the reload (burst" in m and "waits as a flag" in m for m in msgs), msgs
    refused = [m for m in msgs if "refused" in m and "RuntimeError: a library bug" in m]
    assert daemon.reload_errors == len(built) == len(refused) >= 2
    assert all(getattr(e, "closed", False) for e in built)  # no half-built engine left open
    times, frames = RecordingCamera.instances[-1].snapshot()
    check_frames_continuous(times, frames)
