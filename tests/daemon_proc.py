"""`vcam-talker run` as a real process, for the hot-reload and fault tests and the soak
benchmark: it writes the config, starts the daemon with the recording camera as a
plugin, follows its log, asks its status endpoint, and loads the recorded frames after
it exits."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

from tests.recording_cam import BACKEND

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_config(port: int, **sections) -> dict:
    """A daemon config for tests: demo input, no audio output, the recording camera."""
    d = {"audio": {"input": "demo", "output": "none"},
         "sinks": {"virtualcam": {"backend": BACKEND, "device": ""}, "fallback_record": ""},
         "status": {"interval_s": 1.0, "http": f"127.0.0.1:{port}"},
         "engine": {"classic": {"sway": 0.0}}}
    for k, v in sections.items():
        d.setdefault(k, {}).update(v)
    return d


def write_atomic(path: Path, data: dict) -> None:
    """Write a config the way most editors do: a temporary file renamed over it."""
    tmp = path.with_name(path.name + ".swp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)


class DaemonProc:
    """One daemon process. ``lines`` collects its log as (monotonic time, text)."""

    def __init__(self, tmp: Path, cfg: dict, env: dict | None = None, plugins: str = "tests.recording_cam",
                 extra_env: dict | None = None):
        self.tmp = tmp
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.port = int(cfg["status"]["http"].rsplit(":", 1)[1])
        self.record = tmp / "cam.npz"
        e = dict(env if env is not None else os.environ)
        e.update(VCAM_TALKER_PLUGINS=plugins, VCAM_RECORD_OUT=str(self.record), PYTHONPATH=str(ROOT),
                 VCAM_TALKER_CACHE=str(tmp / "cache"))
        e.update(extra_env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "vcam_talker", "run", "--config", str(self.config_path)],
                                     cwd=ROOT, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self._new: queue.Queue = queue.Queue(maxsize=100000)
        self._reader = threading.Thread(target=self._read, name="test-daemon-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            item = (time.monotonic(), line.rstrip())
            self.lines.append(item)
            self._new.put(item)
        self._new.put(None)

    def wait_for(self, needle: str, timeout: float = 30.0, since: float = 0.0) -> tuple[float, str]:
        """The first log line at or after ``since`` that contains ``needle``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for t, line in self.lines[seen:]:
                seen += 1
                if t >= since and needle in line:
                    return t, line
            time.sleep(0.05)
            if self.proc.poll() is not None and seen == len(self.lines):
                break
        raise AssertionError(f"{needle!r} not in the daemon log:\n" + "\n".join(ln for _, ln in self.lines[-40:]))

    def started(self, timeout: float = 30.0) -> None:
        """Until start-up has finished and frames are flowing (the first status line)."""
        self.wait_for("running: engine", timeout)
        self.wait_for("| repeated", timeout)

    def count(self, needle: str, since: float = 0.0) -> int:
        return sum(1 for t, line in self.lines if t >= since and needle in line)

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=3) as r:
            return json.loads(r.read())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, sig: int = signal.SIGTERM) -> float:
        """Stops the daemon; returns how long it took (s)."""
        t = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        took = time.monotonic() - t
        self._reader.join(5)
        return took

    def frames(self) -> tuple[np.ndarray, np.ndarray]:
        """(send times, 1/4-size frames) recorded by the camera; after terminate()."""
        data = np.load(self.record)
        return data["times"], data["frames"]

    def __enter__(self) -> DaemonProc:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.terminate()
