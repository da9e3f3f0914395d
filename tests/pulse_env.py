"""A private sound server for the audio tests (pytest fixtures): PulseAudio or PipeWire.

The session fixture ``pulse_server`` starts a user-mode PulseAudio in its own
XDG_RUNTIME_DIR with two null sinks, like scripts/virtual-audio.sh; parametrised
indirectly with "pipewire" (``@both_servers``) it starts Debian's ``pipewire``,
``wireplumber`` and ``pipewire-pulse`` instead, in that order, under
``dbus-run-session``, and makes the same sinks through pipewire-pulse:

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
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["SERVERS", "PrivatePulse", "PulseServer", "both_servers", "private_pulse", "pulse_server"]

SINKS = ("vcam_in", "vcam_mic")
SERVERS = ("pulseaudio", "pipewire")
#: run a test against both servers: ``@both_servers`` on a test that takes ``pulse_server``
both_servers = pytest.mark.parametrize("pulse_server", SERVERS, indirect=True)

# pipewire first; the session manager needs its socket, pipewire-pulse needs both
_PIPEWIRE_LAUNCH = """\
pipewire & pw=$!
for i in $(seq 200); do [ -S "$XDG_RUNTIME_DIR/pipewire-0" ] && break; sleep 0.025; done
wireplumber &
pipewire-pulse &
wait $pw
"""


@dataclass
class PulseServer:
    """The running private server: its directory, environment and pactl helper."""

    runtime_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen
    kind: str = "pulseaudio"

    def pactl(self, *args: str) -> str:
        """Run pactl against this server; returns stdout (raises on failure)."""
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True,
                              check=True, timeout=10).stdout


def _stop(proc: subprocess.Popen | None, group: bool = False) -> None:
    """Terminate ``proc`` (with ``group``: its whole process group, e.g. dbus-run-session
    with pipewire, wireplumber, pipewire-pulse and the bus)."""
    if proc is None:
        return
    if group:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=3)
                return
            except subprocess.TimeoutExpired:
                continue
        return
    if proc.poll() is not None:
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
    """Starts, stops and restarts one private sound server, ``kind`` "pulseaudio" or
    "pipewire" (with pipewire-pulse); see the module docstring.

    ``start()`` exports its environment into this process (and so into subprocesses)
    until ``close()``; ``kill()`` and ``start()`` again simulate a crashed sound server.
    """

    def __init__(self, kind: str = "pulseaudio") -> None:
        if kind not in SERVERS:
            raise ValueError(f"unknown sound server {kind!r}")
        self.kind = kind
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
        for k in ("PIPEWIRE_RUNTIME_DIR", "PIPEWIRE_REMOTE", "DBUS_SESSION_BUS_ADDRESS"):
            env.pop(k, None)  # nothing of the host's session may leak in
        env.update(XDG_RUNTIME_DIR=str(d), XDG_CONFIG_HOME=str(d / "config"), PULSE_RUNTIME_PATH=str(d / "pulse"),
                   XDG_STATE_HOME=str(d / "state"), XDG_DATA_HOME=str(d / "data"),
                   PULSE_STATE_PATH=str(d / "state"), PULSE_SERVER=f"unix:{self.sock}",
                   ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{conf}")
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._keepalive: list[subprocess.Popen] = []
        self._mp = pytest.MonkeyPatch()

    def _null_sink_args(self, s: str) -> str:
        return f"sink_name={s} rate=48000 channels=1 sink_properties=device.description={s}"

    def _launch(self) -> subprocess.Popen:
        d, env = self.dir, self.env
        log = open(d / "pulse.log", "ab")
        if self.kind == "pipewire":
            (d / "launch.sh").write_text(_PIPEWIRE_LAUNCH)
            args = ["dbus-run-session", "--", "sh", str(d / "launch.sh")]
        else:
            # realtime and high priority, as a desktop's PulseAudio gets them (through rtkit):
            # a server starved by busy processes is not what users run. Without the
            # privilege it carries on at normal priority and says so in its log.
            args = ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
                    "--realtime=yes", "--high-priority=yes", "--use-pid-file=no",
                    f"--load=module-native-protocol-unix socket={self.sock} auth-anonymous=1"]
            args += [f"--load=module-null-sink {self._null_sink_args(s)}" for s in SINKS]
        with log:  # its own session: kill() takes the server's whole group
            return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)

    def start(self) -> PulseServer:
        tools = ["pactl", "pacat", "paplay"] + (["pipewire", "wireplumber", "pipewire-pulse", "dbus-run-session"]
                                                 if self.kind == "pipewire" else ["pulseaudio"])
        missing = [t for t in tools if shutil.which(t) is None]
        if missing:
            pytest.fail(f"{', '.join(missing)} not installed: run scripts/setup.sh (it installs pulseaudio, "
                        "pulseaudio-utils, pipewire, wireplumber, pipewire-pulse and libportaudio2)", pytrace=False)
        d, env = self.dir, self.env
        self.sock.unlink(missing_ok=True)  # a killed server's stale socket
        self.proc = self._launch()
        deadline = time.monotonic() + 15
        while True:
            ok = subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0
            if ok or self.proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not ok:
            log = (d / "pulse.log").read_text(errors="replace").strip().splitlines()[-1:] if \
                (d / "pulse.log").exists() else []
            self.close()
            pytest.fail(f"private {self.kind} did not start ({' '.join(log) or 'no log'})", pytrace=False)
        if self.kind == "pipewire":  # through pipewire-pulse, as a user's setup-audio would
            for s in SINKS:
                subprocess.run(["pactl", "load-module", "module-null-sink", *self._null_sink_args(s).split()],
                               env=env, check=True, capture_output=True, timeout=10)
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
        return PulseServer(runtime_dir=d, env=env, proc=self.proc, kind=self.kind)

    def kill(self) -> None:
        """Kill the server (SIGKILL, like a crash; PipeWire: all its processes) and its keep-alive clients."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        for p in self._keepalive:
            _stop(p)
        self._keepalive = []

    def close(self) -> None:
        for p in self._keepalive:
            _stop(p)
        self._keepalive = []
        _stop(self.proc, group=True)
        self._mp.undo()
        try:
            _rescan_portaudio()
        except OSError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_pulse(kind: str = "pulseaudio"):
    """A private PulseAudio (or PipeWire) with null sinks vcam_in and vcam_mic (context manager)."""
    pp = PrivatePulse(kind)
    try:
        yield pp.start()
    finally:
        pp.close()


@pytest.fixture(scope="session")
def pulse_server(request):
    """A private sound server with null sinks vcam_in and vcam_mic, for the whole session:
    PulseAudio, or the server named by an indirect parameter (``@both_servers``). pytest
    keeps one instance at a time and groups the tests by server."""
    with private_pulse(getattr(request, "param", "pulseaudio")) as server:
        yield server
