"""The supervisor's decisions as tables, and its execution on parts that fail on demand."""

from __future__ import annotations

import logging

import pytest

from vcam_talker.errors import DeviceError
from vcam_talker.supervisor import (CONFIRM, CONFIRM_S, FAIL, REOPEN, RETRY_FAILED, Backoff, Part, Progress, Seen,
                                    Supervisor, decide, stalled_for, warn_bad_samples)

NOW = 100.0


@pytest.mark.parametrize("seen,expected", [
    # healthy and open: nothing to do
    (Seen(up=True), None),
    # open and failed: an outage starts
    (Seen(up=True, fault="Broken pipe"), FAIL),
    # reopened, on trial, and failed again: a quiet retry, not a new outage
    (Seen(up=True, fault="Connection refused", confirm_at=NOW + 1), RETRY_FAILED),
    # on trial, healthy, trial not over yet
    (Seen(up=True, confirm_at=NOW + 0.1), None),
    # on trial, healthy, trial over: it is back
    (Seen(up=True, confirm_at=NOW), CONFIRM),
    # down, its retry time not yet come
    (Seen(up=False, retry_at=NOW + 0.5), None),
    # down, retry time come (or passed)
    (Seen(up=False, retry_at=NOW), REOPEN),
    (Seen(up=False, retry_at=NOW - 30), REOPEN),
    # a fault reported for a part already down changes nothing: it is retried on schedule
    (Seen(up=False, fault="late report", retry_at=NOW + 2), None),
])
def test_decide_one_part(seen, expected):
    assert decide({"x": seen}, NOW).get("x") == expected


def test_decide_several_sinks_at_once():
    """Given sink states and the time, what to reopen: each sink on its own schedule."""
    parts = {"virtualcam": Seen(up=False, retry_at=NOW - 0.1), "ffmpeg": Seen(up=True, fault="Broken pipe"),
             "rtmp": Seen(up=False, retry_at=NOW + 4.0), "srt": Seen(up=True)}
    assert decide(parts, NOW) == {"virtualcam": REOPEN, "ffmpeg": FAIL}


def test_backoff_doubles_to_ten_seconds_and_resets():
    b = Backoff()
    t, waits = 0.0, []
    for _ in range(6):
        b.failed(t)
        waits.append(b.next_at - t)
    assert waits == [1, 2, 4, 8, 10, 10] and b.failures == 6
    b.reset()
    assert (b.delay, b.next_at, b.failures) == (1.0, 0.0, 0)


@pytest.mark.parametrize("moved_at,now,expected", [(0.0, 50.0, 0.0), (10.0, 10.0, 0.0), (10.0, 12.5, 2.5)])
def test_stalled_for(moved_at, now, expected):
    assert stalled_for(moved_at, now) == expected


@pytest.mark.parametrize("count,reported,logged_at,now,expected", [
    (0, 0, -1e9, 0.0, False),  # nothing bad
    (5, 0, -1e9, 0.0, True),  # first ones
    (9, 5, 0.0, 30.0, False),  # new ones, but within the minute
    (9, 5, 0.0, 60.0, True),  # new ones, a minute on
    (5, 5, 0.0, 600.0, False),  # no new ones
])
def test_warn_bad_samples(count, reported, logged_at, now, expected):
    assert warn_bad_samples(count, reported, logged_at, now) is expected


def test_progress_follows_a_counter_and_restarts():
    p = Progress()
    assert p.look(5, 1.0) == 0.0 and p.look(5, 2.0) == 1.0 and p.look(6, 3.0) == 0.0
    p.restart(10.0)
    assert p.look(6, 11.0) == 0.0  # a restart forgets the old value: no stall from before


class Device:
    """A part that can be made to fail: opening raises while ``present`` is false."""

    def __init__(self):
        self.present, self.opens, self.closes = True, 0, 0

    def open(self):
        if not self.present:
            raise DeviceError("device gone")
        self.opens += 1

    def close(self):
        self.closes += 1


def test_supervisor_logs_once_retries_on_the_backoff_and_confirms(caplog):
    dev = Device()
    sup = Supervisor()
    part = sup.add(Part(name="dev", label="the device", open=dev.open, close=dev.close), NOW)
    assert part.up and dev.opens == 1
    caplog.set_level(logging.DEBUG, "vcam_talker")
    # the hook: any thread reports a failure; the next look acts on it
    dev.present = False
    sup.report("dev", "Broken pipe")
    assert sup.check(NOW) == {"dev": FAIL} and not part.up and dev.closes == 1
    t, tries = NOW, []
    while t < NOW + 30:
        t += 0.25
        if sup.check(t):
            tries.append(t - NOW)
    # one backoff: tried after 1, 2, 4, 8 and then every 10 s
    assert tries == pytest.approx([1, 3, 7, 15, 25], abs=0.25)
    dev.present = True
    t = NOW + 35.25
    assert sup.check(t) == {"dev": REOPEN} and part.up and sup.view(t)["dev"]["state"] == "reopening"
    assert sup.check(t + CONFIRM_S) == {"dev": CONFIRM} and sup.view(t + CONFIRM_S)["dev"] == {
        "state": "ok", "outages": 1, "last_outage_s": pytest.approx(35.25 + CONFIRM_S, abs=0.06)}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert errors == ["the device failed (Broken pipe); retrying",
                      f"the device is back after 6 retries ({35.25 + CONFIRM_S:.1f} s down)"]


def test_a_reopened_part_that_fails_on_trial_is_a_quiet_retry(caplog):
    dev = Device()
    sup = Supervisor()
    part = sup.add(Part(name="dev", label="the device", open=dev.open, close=dev.close), NOW)
    sup.report("dev", "Connection refused")
    sup.check(NOW)
    assert sup.check(NOW + 1) == {"dev": REOPEN}
    sup.report("dev", "Connection refused")  # a stream that "opens" and fails seconds later
    assert sup.check(NOW + 2) == {"dev": RETRY_FAILED} and not part.up and part.outages == 1
    assert part.backoff.next_at == pytest.approx(NOW + 2 + 2)  # the backoff went on: 1, then 2 s
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == [
        "the device failed (Connection refused); retrying"]


def test_probe_finds_failures_without_a_report():
    dev, fault = Device(), [""]
    sup = Supervisor()
    sup.add(Part(name="dev", label="the device", open=dev.open, close=dev.close, probe=lambda now: fault[0]), NOW)
    assert sup.check(NOW) == {}
    fault[0] = "no audio for 1.5 s"
    assert sup.check(NOW + 0.25) == {"dev": FAIL}
    assert sup.view(NOW + 0.5)["dev"]["error"] == "no audio for 1.5 s"


def test_publish_drops_a_failed_sink_before_closing_it():
    from vcam_talker.sinks.base import Sink

    order = []

    class Rec(Sink):
        name = "rec"

        def open(self):
            order.append("open")

        def send(self, frame, audio=None):
            pass

        def close(self):
            order.append("close")

    sup = Supervisor(publish=lambda sinks: order.append(("publish", [s.name for s in sinks])))
    sink = Rec()
    sup.add_sink(sink, NOW)
    sink.report("writer died")  # the sink's own hook, bound by the supervisor
    sup.check(NOW)
    assert order == ["open", ("publish", ["rec"]), ("publish", []), "close"]
