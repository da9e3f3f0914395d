"""The audio helper process: ``python -m vcam_talker.audio.helper_proc`` (started by
:class:`vcam_talker.audio.helper.AudioHelper`, never by hand).

It maps the daemon's shared :class:`AudioRing` and runs the capture and the delayed mic
in a Python of its own, so the renderer's Python threads cannot hold them up (see
helper.py). It obeys one request at a time from its socket and exits when the daemon
closes it or dies (the socket reads end-of-file).

Requests (tuples) and answers (``("ok", value)`` or ``(error kind, message)``):
- ``("open", kind, name, kwargs, realtime)``: kind "capture" or "playback"; ``name`` is
  the configured device, routed here (routing sets PULSE_SINK/PULSE_SOURCE in this
  process); then every thread to realtime priority ``realtime`` (0: normal; realtime.py);
- ``("close", kind)``;
- ``("do", kind, attr, args)``: an attribute's value, or the method called with args
  (exceptions as values come back as their one-line text);
- ``("realtime",)``: what the threads' scheduling is now, in a few words;
- ``("clicks", samples)``: test sync's marks (ring samples; None ends it), answered with
  each mark's click DAC time so far.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

log = logging.getLogger("vcam_talker.audio.helper")


class Helper:
    def __init__(self, ring):
        self.ring = ring
        self.parts: dict = {"capture": None, "playback": None}
        self.track = None  # test sync's ClickTrack while one runs
        self.marks: list = []  # its marks, in the daemon's order
        self.realtime = (0, "normal")  # (priority asked for, what was done)
        self._rt_gen = 0  # promotions scheduled so far: only the newest applies
        self._rt_lock = threading.Lock()

    def handle(self, req: tuple):
        op = req[0]
        if op == "open":
            return self.open(*req[1:])
        if op == "close":
            self.close(req[1])
            return None
        if op == "do":
            return self.do(*req[1:])
        if op == "clicks":
            return self.clicks(req[1])
        if op == "realtime":
            return self.realtime[1]
        raise ValueError(f"unknown request {op!r}")

    def schedule_realtime(self, priority: int) -> None:
        """Every thread to ``priority`` (realtime.apply), from a thread of its own: a
        promotion waits for the input's first block (until then PortAudio's capture thread
        polls busily, see realtime.py), and a request must not wait with it (the daemon's
        frame thread asks too)."""
        from vcam_talker.audio import realtime as rt

        self._rt_gen += 1
        gen, cap = self._rt_gen, self.parts.get("capture")
        if priority > 0:
            self.realtime = (priority, "pending: after the input's first block")

        def run() -> None:
            deadline = time.monotonic() + 5.0
            while priority > 0 and cap is not None and cap.stats.blocks == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # its own first block: the ring may have other writers
            with self._rt_lock:  # the newest applies last
                if gen == self._rt_gen:
                    self.realtime = (priority, rt.apply(priority))
        threading.Thread(target=run, name="vcam-realtime", daemon=True).start()

    def _apply_now(self, priority: int) -> None:
        """Every thread to ``priority`` at once; a promotion still pending is void."""
        from vcam_talker.audio import realtime as rt

        with self._rt_lock:
            self._rt_gen += 1
            self.realtime = (priority, rt.apply(priority))

    def open(self, kind: str, name: str, kwargs: dict, realtime: int = 0) -> dict:
        from vcam_talker.audio.routing import route_device

        self.close(kind)
        if self.realtime[0] > 0:
            # a new stream's threads inherit this thread's policy: at normal priority until
            # the input delivers (a fresh capture thread polls busily until then). An open
            # that fails leaves it so until the next good one: promoting again after each
            # failed retry hung the helper for 20 s and more while PipeWire restarted under
            # load (test_pulseaudio_killed_and_restarted[pipewire], --load 1)
            self._apply_now(0)
        if kind == "capture":
            from vcam_talker.audio.capture import AudioCapture

            part = AudioCapture(route_device(name, "input"), self.ring, **kwargs)
        elif kind == "playback":
            from vcam_talker.audio.playback import DelayedPlayback

            part = DelayedPlayback(route_device(name, "output"), self.ring, **kwargs)
        else:
            raise ValueError(f"unknown part {kind!r}")
        part.start()
        self.parts[kind] = part
        # after the open: the stream's own threads (PortAudio's, libpulse's) exist now
        if realtime > 0 or self.realtime[0] > 0:
            self.schedule_realtime(realtime)
        return {"device_rate": part.device_rate, "channels": part.channels, "device_name": part.info["name"],
                "realtime": self.realtime[1]}

    def close(self, kind: str) -> None:
        part, self.parts[kind] = self.parts.get(kind), None
        if part is not None:
            part.stop()

    def do(self, kind: str, attr: str, args: tuple):
        part = self.parts.get(kind)
        if part is None:
            raise LookupError(f"the {kind} is not open")
        value = getattr(part, attr)
        if callable(value):
            value = value(*args)
        if isinstance(value, BaseException):
            value = " ".join(str(value).split()) or type(value).__name__
        return value

    def clicks(self, samples: list[int] | None) -> list[float | None]:
        from vcam_talker.web.syncprobe import ClickTrack, Mark

        pb = self.parts.get("playback")
        if samples is None:
            if pb is not None:
                pb.mark_click(None)
            self.track = None
            return []
        if self.track is None:
            self.marks = [Mark(0, s) for s in samples]
            self.track = ClickTrack(self.marks)
            if pb is not None:
                pb.mark_click(self.track)
        for m, s in zip(self.marks, samples):  # a skipped flash frame moves its mark
            if m.dac is None:
                m.sample = s
        return [m.dac for m in self.marks]

    def stop(self) -> None:
        for kind in list(self.parts):
            try:
                self.close(kind)
            except Exception as exc:  # exiting anyway
                log.warning("closing the %s: %s", kind, exc)


def serve(conn: Connection, helper: Helper) -> None:
    """Answer requests until the daemon goes away."""
    from vcam_talker.errors import DeviceError

    while True:
        try:
            # a signal's Python handler runs only here, on the main thread: realtime.guard's
            # SIGXCPU must not wait for the next request
            if not conn.poll(0.05):
                continue
            req = conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer = ("ok", helper.handle(req))
        except DeviceError as exc:
            answer = ("DeviceError", str(exc))
        except Exception as exc:
            answer = ("error", f"{type(exc).__name__}: {' '.join(str(exc).split())}")
        try:
            conn.send(answer)
        except (OSError, ValueError):
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vcam_talker.audio.helper_proc")
    p.add_argument("--sock", type=int, required=True)
    p.add_argument("--ring", type=int, required=True)
    p.add_argument("--rate", type=int, required=True)
    p.add_argument("--capacity", type=float, required=True)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    # Ctrl-C in a terminal and systemd's stop (SIGTERM to the whole unit) are for the
    # daemon: it closes the devices and then this socket, and this process ends with it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="vcam-talker: %(levelname)s: %(message)s", stream=sys.stderr)
    from vcam_talker.audio import realtime
    from vcam_talker.audio.ring import AudioRing

    ring = AudioRing.attach(a.ring, a.rate, a.capacity)
    conn = Connection(a.sock)
    helper = Helper(ring)

    def dropped(why: str) -> None:
        helper.realtime = (0, why)
        log.warning("audio helper: realtime priority %s; normal scheduling until the devices reopen", why)
    realtime.guard(dropped)
    conn.send(("ready", None))
    try:
        serve(conn, helper)
    finally:
        helper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
