"""A private PulseAudio server for the audio tests (pytest fixtures).

The session fixture ``pulse_server`` starts a user-mode PulseAudio in its own
XDG_RUNTIME_DIR with two null sinks, like scripts/virtual-audio.sh:

    vcam_in   play speech into it; record its monitor (ALSA name vcam_in_monitor)
    vcam_mic  the delayed mic;     record its monitor (ALSA name vcam_mic_monitor)

PortAudio on Debian reaches PulseAudio only through ALSA's pulse plugin, so the fixture
writes an asound conf naming these as ALSA pcms (vcam_in_sink, vcam_in_monitor,
vcam_mic_sink, vcam_mic_monitor), exports the environment for this process and its
subprocesses (paplay, pactl), and makes sounddevice re-scan its devices.

A silent 10 ms-latency client plays into each sink for the whole session. Without one,
an idle null sink renders up to 2 s ahead, so a stream opened on its monitor receives
its first block only after ~1.8 s and can keep a 0.5 s backlog for good (measured here);
a real microphone has no such quirk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PrivatePulse", "PulseServer", "private_pulse", "pulse_server"]

SINKS = ("vcam_in", "vcam_mic")


@dataclass
class PulseServer:
    """The running private server: its directory, environment and pactl helper."""

    runtime_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen

    def pactl(self, *args: str) -> str:
        """Run pactl against this server; returns stdout (raises on failure)."""
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True,
                              check=True, timeout=10).stdout


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=3)


def _rescan_portaudio() -> None:
    """PortAudio reads its device list (and the ALSA config) at initialisation only."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


class PrivatePulse:
    """Starts, stops and restarts one private PulseAudio server; see the module docstring.

    ``start()`` exports its environment into this process (and so into subprocesses)
    until ``close()``; ``kill()`` and ``start()`` again simulate a crashed sound server.
    """

    def __init__(self) -> None:
        # Short path under /tmp: the socket path must stay below 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="vcam-pulse-", dir="/tmp"))
        os.chmod(self.dir, 0o700)
        self.sock = self.dir / "pulse" / "native"
        conf = self.dir / "asound-vcam.conf"
        conf.write_text("".join(
            f'pcm.{s}_sink {{ type pulse; device "{s}" }}\npcm.{s}_monitor {{ type pulse; device "{s}.monitor" }}\n'
            for s in SINKS))
        env = dict(os.environ)
        for k in ("PULSE_SINK", "PULSE_SOURCE", "PULSE_LATENCY_MSEC"):
            env.pop(k, None)
        d = self.dir
        env.update(XDG_RUNTIME_DIR=str(d), XDG_CONFIG_HOME=str(d / "config"), PULSE_RUNTIME_PATH=str(d / "pulse"),
                   PULSE_STATE_PATH=str(d / "state"), PULSE_SERVER=f"unix:{self.sock}",
                   ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{conf}")
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._keepalive: list[subprocess.Popen] = []
        self._mp = pytest.MonkeyPatch()

    def start(self) -> PulseServer:
        missing = [t for t in ("pulseaudio", "pactl", "pacat", "paplay") if shutil.which(t) is None]
        if missing:
            pytest.fail(f"{', '.join(missing)} not installed: run scripts/setup.sh "
                        "(it installs pulseaudio, pulseaudio-utils and libportaudio2)", pytrace=False)
        d, env = self.dir, self.env
        args = ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "--realtime=no",
                "--high-priority=no", "--use-pid-file=no", f"--log-target=file:{d / 'pulse.log'}",
                f"--load=module-native-protocol-unix socket={self.sock} auth-anonymous=1"]
        args += [f"--load=module-null-sink sink_name={s} rate=48000 channels=1 "
                 f"sink_properties=device.description={s}" for s in SINKS]
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            ok = subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0
            if ok or self.proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not ok:
            log = (d / "pulse.log").read_text(errors="replace").strip().splitlines()[-1:] if \
                (d / "pulse.log").exists() else []
            self.close()
            pytest.fail(f"private PulseAudio did not start ({' '.join(log) or 'no log'})", pytrace=False)
        for s in SINKS:
            self._keepalive.append(subprocess.Popen(
                ["pacat", "--playback", f"--device={s}", "--latency-msec=10", "--raw", "--format=s16le",
                 "--rate=48000", "--channels=1", "/dev/zero"],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for k in ("PULSE_SINK", "PULSE_SOURCE", "PULSE_LATENCY_MSEC"):
            self._mp.delenv(k, raising=False)
        for k in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "PULSE_RUNTIME_PATH", "PULSE_STATE_PATH", "PULSE_SERVER",
                  "ALSA_CONFIG_PATH"):
            self._mp.setenv(k, env[k])
        _rescan_portaudio()
        time.sleep(0.2)  # let the keep-alive clients connect
        return PulseServer(runtime_dir=d, env=env, proc=self.proc)

    def kill(self) -> None:
        """Kill the server (SIGKILL, like a crash) and its keep-alive clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for p in self._keepalive:
            _stop(p)
        self._keepalive = []

    def close(self) -> None:
        for p in self._keepalive:
            _stop(p)
        self._keepalive = []
        _stop(self.proc)
        self._mp.undo()
        try:
            _rescan_portaudio()
        except OSError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_pulse():
    """A private PulseAudio with null sinks vcam_in and vcam_mic (context manager)."""
    pp = PrivatePulse()
    try:
        yield pp.start()
    finally:
        pp.close()


@pytest.fixture(scope="session")
def pulse_server():
    """A private PulseAudio with null sinks vcam_in and vcam_mic, for the whole session."""
    with private_pulse() as server:
        yield server
