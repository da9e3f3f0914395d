"""One supervisor for everything outside our code that can fail: the audio input, the
audio output and every sink (virtual camera, ffmpeg recorder or stream).

Health comes in through one hook, :meth:`Supervisor.report` (the pacer calls it when a
send raises; a sink calls its own ``report`` when it dies on its own, e.g. the ffmpeg
writer after a dropped connection), or from each part's ``probe`` (the audio devices:
an error, or a clock that stopped moving). A failure is logged once, the part is closed,
and it is reopened on one backoff schedule (1, 2, 4 … 10 s). A reopened part is on trial
until it has stayed healthy for its confirm time; then it is back, logged once too (a
failure on trial is a quiet retry, not a new outage). The decisions are pure functions (:func:`decide`, :func:`stalled_for`,
:func:`warn_bad_samples`); the control thread only executes them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from vcam_talker.errors import VcamError
from vcam_talker.sinks.base import Sink

log = logging.getLogger("vcam_talker.daemon")

#: a source or output whose clock has not moved for this long has failed
STALL_S = 1.5
#: a reopened part counts as back only after this long without a fault (a sink may ask
#: for longer: an ffmpeg stream "opens" at once and learns seconds later that nobody listens)
CONFIRM_S = 2.0
#: NaN/inf input samples are reported at most this often (s)
BAD_SAMPLES_EVERY_S = 60.0


@dataclass
class Backoff:
    """The one retry schedule: the next attempt 1, 2, 4 … 10 s after each failure."""

    first: float = 1.0
    cap: float = 10.0
    delay: float = 1.0
    next_at: float = 0.0
    failures: int = 0

    def failed(self, now: float) -> None:
        self.failures += 1
        self.next_at = now + self.delay
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        self.delay, self.next_at, self.failures = self.first, 0.0, 0


# ---- pure decisions ----------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """One part as the control thread sees it at one look."""

    up: bool  # open (possibly on trial after a reopen)
    fault: str = ""  # a failure reported or probed since the last look; "" for none
    retry_at: float = 0.0  # a part that is down may be tried again from then on
    confirm_at: float | None = None  # set while a reopened part is on trial: back from then on


#: an open part failed: log it, close it, start retrying
FAIL = "fail"
#: a reopened part failed while on trial: close it quietly, retry later (no new outage)
RETRY_FAILED = "retry-failed"
#: a closed part's retry time has come
REOPEN = "reopen"
#: a reopened part has survived its trial: it is back
CONFIRM = "confirm"


def decide(parts: Mapping[str, Seen], now: float) -> dict[str, str]:
    """What to do with each part now; parts that need nothing are left out."""
    out = {}
    for name, s in parts.items():
        if s.up and s.fault:
            out[name] = RETRY_FAILED if s.confirm_at is not None else FAIL
        elif s.up and s.confirm_at is not None and now >= s.confirm_at:
            out[name] = CONFIRM
        elif not s.up and now >= s.retry_at:
            out[name] = REOPEN
    return out


def stalled_for(moved_at: float, now: float) -> float:
    """Seconds a clock has not moved (0 before its first look)."""
    return now - moved_at if moved_at > 0 else 0.0


def warn_bad_samples(count: int, reported: int, logged_at: float, now: float) -> bool:
    """Say that the input produced NaN/inf samples: only when there are new ones, and at
    most once a minute (a broken driver would otherwise flood the log)."""
    return count > reported and now - logged_at >= BAD_SAMPLES_EVERY_S


# ---- execution ---------------------------------------------------------------------------
@dataclass
class Progress:
    """Follows a counter that should keep moving (ring samples, playback callbacks)."""

    value: int = -1
    moved_at: float = 0.0

    def look(self, value: int, now: float) -> float:
        """Seconds since the value last moved."""
        if value != self.value:
            self.value, self.moved_at = value, now
        return stalled_for(self.moved_at, now)

    def restart(self, now: float) -> None:
        self.value, self.moved_at = -1, now


def _quiet(now: float) -> str:
    return ""


@dataclass
class Part:
    """One supervised thing: how to open, close and probe it, what to say, and its state.

    ``open`` raises VcamError when unavailable. ``probe(now)`` returns a failure reason
    ("" when healthy). ``on_down`` runs each time the part is or stays down (the input
    starts its stand-in silence there). Messages are format strings over {label}, {why},
    {retries} and {down}."""

    name: str
    label: str
    open: Callable[[], None]
    close: Callable[[], None]
    probe: Callable[[float], str] = _quiet
    on_down: Callable[[], None] | None = None
    msg_unavailable: str = "{label}: {why}; retrying"
    msg_lost: str = "{label} failed ({why}); retrying"
    msg_back: str = "{label} is back after {retries} retries ({down:.1f} s down)"
    sink: Sink | None = None
    confirm_s: float = CONFIRM_S
    up: bool = False
    error: str = ""
    backoff: Backoff = field(default_factory=Backoff)
    down_since: float = 0.0
    confirm_at: float | None = None
    outages: int = 0
    last_outage_s: float = 0.0

    def view(self, now: float) -> dict:
        """For status: this part's health story."""
        state = "down" if not self.up else "ok" if self.confirm_at is None else "reopening"
        d = {"state": state, "outages": self.outages}
        if state != "ok":
            d.update(error=self.error, down_s=round(now - self.down_since, 1), retries=self.backoff.failures,
                     next_retry_s=round(max(0.0, self.backoff.next_at - now), 1))
        if self.last_outage_s:
            d["last_outage_s"] = round(self.last_outage_s, 1)
        if self.sink is not None:
            d.update(self.sink.stats())
        return d


class Supervisor:
    """Opens, watches and reopens the parts; the daemon's control thread calls
    :meth:`check` a few times a second. ``publish`` receives the list of open sinks
    whenever it changes (before a failed sink is closed, so the pacer drops it first)."""

    def __init__(self, publish: Callable[[list[Sink]], None] = lambda sinks: None):
        self.publish = publish
        self.parts: dict[str, Part] = {}
        self._reports: dict[str, str] = {}
        self._lock = threading.Lock()  # report() is called from the pacer and writer threads
        self._published: list[Sink] = []

    # -- the health hook ------------------------------------------------------------------
    def report(self, name: str, reason: str) -> None:
        """Any thread: part ``name`` failed. The first reason since the last look wins."""
        with self._lock:
            self._reports.setdefault(name, reason or "failed")

    def _take_reports(self) -> dict[str, str]:
        with self._lock:
            out, self._reports = self._reports, {}
        return out

    # -- adding and removing parts -----------------------------------------------------------
    def add(self, part: Part, now: float) -> Part:
        """Register and open a part; a failure is logged once and retried on the backoff."""
        self.parts[part.name] = part
        with self._lock:  # a report for a part this one replaces is not about this one
            self._reports.pop(part.name, None)
        if part.sink is not None:
            part.sink.report = lambda reason, name=part.name: self.report(name, reason)
        try:
            part.open()
            _opened(part)
        except VcamError as exc:
            part.error = " ".join(str(exc).split())
            log.error(part.msg_unavailable.format(label=part.label, why=part.error))
            self._went_down(part, now)
        self._publish()
        return part

    def add_sink(self, sink: Sink, now: float) -> Part:
        return self.add(Part(name=sink.name, label=sink.detail, open=sink.open, close=sink.close, sink=sink,
                             confirm_s=max(CONFIRM_S, sink.confirm_s),
                             msg_unavailable="{why}",
                             msg_lost="{label} failed ({why}); reopening it, the other sinks go on"), now)

    def remove(self, name: str) -> None:
        """Close and forget a part (a reload replaces it)."""
        part = self.parts.pop(name, None)
        if part is None:
            return
        self._publish()
        if part.up:
            part.up = False
            _close(part)

    def remove_sinks(self) -> None:
        for name in [n for n, p in self.parts.items() if p.sink is not None]:
            self.remove(name)

    def sinks(self) -> list[Sink]:
        """The sinks that are open now."""
        return [p.sink for p in self.parts.values() if p.sink is not None and p.up]

    def up(self, name: str) -> bool:
        part = self.parts.get(name)
        return part is not None and part.up

    # -- the control thread's look ---------------------------------------------------------
    def check(self, now: float) -> dict[str, str]:
        """Probe, decide, execute. Returns what was done, by part name."""
        reports = self._take_reports()
        seen = {}
        for name, p in self.parts.items():
            fault = reports.get(name, "")
            if p.up and not fault:
                fault = p.probe(now)
            seen[name] = Seen(p.up, fault, p.backoff.next_at, p.confirm_at)
        actions = decide(seen, now)
        for name, action in actions.items():
            part = self.parts[name]
            if action == FAIL:
                self._fail(part, seen[name].fault, now)
            elif action == RETRY_FAILED:
                self._retry_failed(part, seen[name].fault, now)
            elif action == CONFIRM:
                self._confirm(part, now)
            else:
                self._reopen(part, now)
        if actions:
            self._publish()
        return actions

    def _fail(self, part: Part, why: str, now: float) -> None:
        part.up, part.error = False, " ".join(why.split())
        part.outages += 1
        log.error(part.msg_lost.format(label=part.label, why=part.error))
        self._publish()  # the pacer stops sending to it before it is closed
        _close(part)
        part.backoff.reset()
        self._went_down(part, now)

    def _reopen(self, part: Part, now: float) -> None:
        try:
            part.open()
        except VcamError as exc:
            self._retry_failed(part, str(exc), now, opened=False)
            return
        _opened(part)
        part.confirm_at = now + part.confirm_s  # on trial: back only when it stays up
        # a send already on its way when the part was closed may have failed since:
        # that report belongs to the old device, not to this one
        with self._lock:
            self._reports.pop(part.name, None)

    def _retry_failed(self, part: Part, why: str, now: float, opened: bool = True) -> None:
        part.error = " ".join(why.split())
        log.debug("%s still unavailable: %s", part.label, part.error)
        if opened:
            part.up, part.confirm_at = False, None
            self._publish()
            _close(part)
        self._went_down(part, now)

    def _confirm(self, part: Part, now: float) -> None:
        part.last_outage_s = now - part.down_since
        log.info(part.msg_back.format(label=part.label, retries=part.backoff.failures, down=part.last_outage_s))
        part.backoff.reset()
        part.error, part.confirm_at = "", None

    def _went_down(self, part: Part, now: float) -> None:
        if part.backoff.failures == 0:
            part.down_since = now
        part.backoff.failed(now)
        if part.on_down is not None:
            part.on_down()

    def _publish(self) -> None:
        live = self.sinks()
        if live != self._published:
            self._published = live
            self.publish(live)

    def close_all(self) -> None:
        for name in list(self.parts):
            self.remove(name)

    def view(self, now: float) -> dict[str, dict]:
        """For status (the HTTP thread): a copy, as a reload may add or remove parts meanwhile."""
        return {name: p.view(now) for name, p in list(self.parts.items())}


def _opened(part: Part) -> None:
    part.up = True
    if part.sink is not None:  # names the device it got ("virtualcam /dev/video10 (RGB)")
        part.label = part.sink.detail


def _close(part: Part) -> None:
    try:
        part.close()
    except Exception as exc:  # closing a broken device may fail too; it is gone either way
        log.warning("closing %s: %s", part.label, exc)
