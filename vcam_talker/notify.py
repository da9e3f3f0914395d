"""The systemd notify protocol: datagrams to $NOTIFY_SOCKET (READY=1, WATCHDOG=1, STATUS=...).

Implemented directly (it is one sendto) instead of depending on a library. Without
$NOTIFY_SOCKET every call is a no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        self.addr = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        # ping at half the watchdog period, as sd_watchdog_enabled(3) advises
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and ours else None
        self._last_ping = 0.0
        self._last_progress = -1
        self._sock = None
        if self.addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, state: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(state.encode(), self.addr)
            return True
        except OSError:  # systemd gone or socket full: never take the daemon down for it
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self, now: float | None = None, progress: int | None = None) -> None:
        """Pings only when due and only on proof of progress: ``progress`` (frames
        published) must have grown since the last ping, so a loop that runs but
        publishes nothing stops pinging, and systemd restarts the service."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic() if now is None else now
        if progress is not None and progress <= self._last_progress:
            return
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            if progress is not None:
                self._last_progress = progress
            self.send("WATCHDOG=1")

    def reloading(self) -> None:
        # systemd >= 253 wants the CLOCK_MONOTONIC time with RELOADING=1
        self.send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
