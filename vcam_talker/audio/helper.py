"""The audio helper: the capture and the delayed mic in a process of their own.

On a saturated CPU the kernel deschedules the renderer thread while it holds Python's
GIL; every other thread of the daemon, the audio ones included, then waits 50-100 ms
(traced: whole-process gaps with no callback at all, while a separate process woke on
time), longer than the output buffer, and the mic played a gap. A process has its own
GIL: here the capture and the playback run in ``helper_proc``, on the same
:class:`AudioRing` (shared memory, no locks across processes), and the daemon drives
them through :class:`RemoteCapture` and :class:`RemotePlayback`, which look like
AudioCapture and DelayedPlayback to the rest of the code. The renderer can stall
only the video.

Requests go one at a time over a socket (see helper_proc). When the helper dies, each
call fails with a one-line :class:`AudioError`; the supervisor's probes see it as the
device lost, and its reopen starts a fresh helper on the same ring.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from multiprocessing.connection import Connection

from vcam_talker.audio.stats import CaptureStats, PlaybackStats
from vcam_talker.errors import AudioError, DeviceError

log = logging.getLogger(__name__)

#: seconds to wait for the helper to start (imports) and for an answer
START_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 5.0
#: a query waits this long for a request in progress (an open on a restarting sound
#: server takes seconds), then answers from its last value: the frame thread asks too
QUERY_WAIT_S = 0.01


class HelperBusy(Exception):
    """Another request holds the helper (see QUERY_WAIT_S)."""


class AudioHelper:
    """The helper process for one shared ``ring`` (started on the first call)."""

    def __init__(self, ring):
        if ring.fd is None:
            raise ValueError("the audio helper needs a shared ring (AudioRing(..., shared=True))")
        self.ring = ring
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.starts = 0  # helpers started so far: a part opened in an earlier one is gone
        self.last_exit: str | None = None  # why the last one ended, in one line
        self.realtime = 0  # the priority each open asks for (0: normal scheduling)
        self._realtime_state = "normal"

    def call(self, *req, timeout: float = CALL_TIMEOUT_S, spawn: bool = False, wait: float = -1):
        """Send one request, return its value; AudioError (DeviceError for a device) when
        it failed or the helper is gone. Only ``spawn`` (opening a device) starts one.
        ``wait``: how long another request may hold the helper (an open takes up to
        seconds) before :class:`HelperBusy`; -1 waits for it."""
        if not self._lock.acquire(timeout=wait):
            raise HelperBusy(req[0])
        try:
            if self._closed:
                raise AudioError("the audio helper is closed")
            conn = self._ensure(spawn)
            try:
                conn.send(req)
                if not conn.poll(timeout):
                    self._kill()
                    self.last_exit = f"audio helper: no answer to {req[0]!r} within {timeout:g} s; killed it"
                    raise AudioError(self.last_exit)
                tag, value = conn.recv()
            except (EOFError, OSError) as exc:
                code = self._kill()
                self.last_exit = f"audio helper exited ({self._why(code, exc)})"
                raise AudioError(self.last_exit) from None
        finally:
            self._lock.release()
        if tag == "ok":
            return value
        raise (DeviceError if tag == "DeviceError" else AudioError)(value)

    @property
    def realtime_state(self) -> str:
        """What the helper's threads run at now, in a few words (audio/realtime.py)."""
        if self.pid is not None:
            try:
                self._realtime_state = self.call("realtime", wait=QUERY_WAIT_S)
            except (AudioError, HelperBusy):  # gone or busy: what it last said
                pass
        return self._realtime_state

    @property
    def pid(self) -> int | None:
        """The running helper's process id (None while none runs)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def close(self) -> None:
        """End the helper: it closes its streams when its socket closes."""
        with self._lock:
            self._closed = True
            proc, conn = self._proc, self._conn
            self._proc = self._conn = None
            if conn is not None:
                conn.close()
            if proc is not None:
                try:
                    proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # -- the process -------------------------------------------------------------------

    def _ensure(self, spawn: bool) -> Connection:
        if self._proc is not None and self._proc.poll() is None and self._conn is not None:
            return self._conn
        if self._proc is not None:  # it died
            code = self._kill()
            self.last_exit = f"audio helper exited ({self._why(code, None)})"
        if not spawn:
            raise AudioError(self.last_exit or "the audio helper is not running")
        ours, theirs = socket.socketpair()
        ring = self.ring
        root = str(Path(__file__).resolve().parents[2])  # the package's parent, for -m
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "vcam_talker.audio.helper_proc", "--sock", str(theirs.fileno()),
               "--ring", str(ring.fd), "--rate", str(ring.sample_rate), "--capacity", repr(ring.capacity_s)]
        if log.isEnabledFor(logging.DEBUG):
            cmd.append("--verbose")
        try:
            self._proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(), ring.fd), env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            raise AudioError(f"cannot start the audio helper: {exc}") from None
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self.starts += 1
        try:
            if not self._conn.poll(START_TIMEOUT_S):
                raise AudioError(f"the audio helper did not start within {START_TIMEOUT_S:g} s")
            self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._kill()
            raise AudioError(f"the audio helper exited while starting ({self._why(code, exc)})") from None
        except AudioError:
            self._kill()
            raise
        log.debug("audio helper started, pid %d", self._proc.pid)
        return self._conn

    def _kill(self) -> int | None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        try:
            return proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return None

    @staticmethod
    def _why(code: int | None, exc: BaseException | None) -> str:
        if code is not None and code < 0:
            return f"killed by signal {-code}"
        if code is not None:
            return f"exit status {code}"
        return type(exc).__name__ if exc is not None else "unknown"


class _Remote:
    """Common to both ends: opened in the helper; calls fail soft where the daemon only
    reads (the last answer), and say why in ``error``."""

    kind = ""

    def __init__(self, helper: AudioHelper, name: str, kwargs: dict):
        self.helper, self.name, self.kwargs = helper, name, kwargs
        self._last: dict = {}
        self._error: BaseException | None = None
        self._gen = -1  # the helper's start count when this part opened in it
        self.info: dict = {}

    def start(self):
        self.info = self.helper.call("open", self.kind, self.name, self.kwargs, self.helper.realtime,
                                     timeout=START_TIMEOUT_S, spawn=True)
        self.helper._realtime_state = self.info.get("realtime", "normal")
        self.info["name"] = self.info.get("device_name", self.name)
        self._gen = self.helper.starts
        return self

    def stop(self) -> None:
        if self.helper.starts != self._gen:  # its helper died, and the stream with it
            return
        try:
            self.helper.call("close", self.kind)
        except AudioError:  # the helper is gone: so is the stream
            pass

    def _do(self, attr: str, *args, default=None):
        if self.helper.starts != self._gen:  # opened in a helper that has since died
            self._error = AudioError(self.helper.last_exit or "the audio helper restarted")
        if self._error is not None:
            return self._last.get(attr, default)
        try:
            self._flush()
            value = self.helper.call("do", self.kind, attr, args, wait=QUERY_WAIT_S)
        except HelperBusy:
            return self._last.get(attr, default)
        except AudioError as exc:
            self._error = exc
            return self._last.get(attr, default)
        self._last[attr] = value
        return value

    def _flush(self) -> None:
        """Send what was set while the helper was busy (RemotePlayback's target)."""

    @property
    def error(self) -> BaseException | None:
        """Why this end failed: the helper gone, or the stream's own error (as text)."""
        value = self._do("error")
        if self._error is not None:
            return self._error
        return None if value is None else AudioError(value)

    @property
    def stats(self):
        return self._do("stats", default=self._stats_type())

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RemoteCapture(_Remote):
    """An AudioCapture in the helper, writing the shared ring."""

    kind = "capture"
    _stats_type = CaptureStats


class RemotePlayback(_Remote):
    """A DelayedPlayback in the helper, reading the shared ring."""

    kind = "playback"
    _stats_type = PlaybackStats

    def __init__(self, helper: AudioHelper, name: str, kwargs: dict):
        super().__init__(helper, name, kwargs)
        self.target_delay = float(kwargs.get("target_delay", 0.15))
        self.trim_s = float(kwargs.get("trim_s", 0.0))
        self._target_sent = True  # the open's kwargs carry it
        self._click = None

    def set_target_delay(self, seconds: float) -> None:
        """Sent at once, or with the next query when the helper is busy (never waits)."""
        self.target_delay = float(seconds)
        self._target_sent = False
        self._do("position")  # any query sends it first

    def _flush(self) -> None:
        if not self._target_sent:
            self.helper.call("do", self.kind, "set_target_delay", (self.target_delay,), wait=QUERY_WAIT_S)
            self._target_sent = True

    @property
    def target(self) -> float:
        return self.target_delay + self.trim_s

    @property
    def current_delay(self) -> float:
        return float(self._do("current_delay", default=float("nan")))

    @property
    def residual(self) -> float:
        return self.current_delay - self.target

    @property
    def position(self) -> float:
        return float(self._do("position", default=float("nan")))

    def in_pause(self, ahead_s: float | None = 0.06) -> bool:
        self._last.pop("in_pause", None)  # busy: not known to be a pause now
        return bool(self._do("in_pause", ahead_s, default=False))

    def mark_click(self, click) -> None:
        """Test sync: the marks' samples go to the helper, which clicks there; their DAC
        times come back through :meth:`poll_clicks`."""
        self._click = click
        samples = None if click is None else [m.sample for m in click.marks]
        try:
            self.helper.call("clicks", samples)
        except AudioError as exc:
            self._error = exc

    def poll_clicks(self) -> None:
        click = self._click
        if click is None:
            return
        try:
            dacs = self.helper.call("clicks", [m.sample for m in click.marks])
        except AudioError as exc:
            self._error = exc
            return
        for m, dac in zip(click.marks, dacs):
            if dac is not None:
                m.dac = dac
