"""The daemon's status: the dict served on /status and the one-line log summary."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from vcam_talker.audio.ring import RingRangeError
from vcam_talker.latency import latency_parts

if TYPE_CHECKING:
    from vcam_talker.daemon import Daemon


def status(d: Daemon) -> dict:
    """Everything ``vcam-talker status`` shows, from one running daemon."""
    now = time.monotonic()
    s = d.stats.snapshot()
    health = d.supervisor.view(now)
    sinks = {name: h for name, h in health.items() if name not in ("input", "output")}
    s.update({"delay_ms": round(d.delay.value * 1e3, 1),
              # where the delay is heading; it moves to it in the next pauses
              "delay_wanted_ms": round(d.delay.wanted * 1e3, 1),
              "delay_measured": d.delay.measured,
              # delay changes wait for a pause; these were made inside speech
              "delay_changes_forced": d.delay.forced,
              # measured at start: what this machine sustains with the engine and size
              "selfcheck": d.selfcheck.as_status(),
              # added to the delay because the input came late (vcam_talker/audio/headroom.py)
              "audio_headroom_ms": round(d.delay.headroom_s * 1e3, 1),
              "queue_depth": max(0, d.store.newest() - d.pacer.due_index()),
              "uptime_s": round(now - d.started_at, 1), "engine": d.active.engine.name,
              "avatar": str(d.cfg.avatar_path()), "reloads": d.reloads,
              "reload_errors": d.reload_errors, "last_error": d.last_error,
              "input": "demo" if d.demo else ("ok" if d.supervisor.up("input") else "down"),
              "output": "none" if d.cfg.audio.output == "none" else
              ("ok" if d.supervisor.up("output") else "down"),
              # one word per sink ("ok" or why it is down), and the whole story per part
              "sinks": {name: "ok" if h["state"] == "ok" else h["error"] for name, h in sinks.items()},
              "health": health})
    pb = d.audio.playback
    if pb is not None:
        cd, ps = pb.current_delay, pb.stats  # one read of each: in the helper, each is a call
        if cd == cd:  # NaN until a reopened output plays its first block
            s["audio_delay_ms"] = round(cd * 1e3, 1)
            s["av_offset_ms"] = round((cd - d.audio_delay()) * 1e3, 1)
        # counters over the daemon's life (a reopened output starts its own from 0)
        s["playback"] = {"speed": round(ps.speed, 4), "clock_ratio": round(ps.clock_ratio, 5),
                         **d.audio.playback_totals(ps)}
    parts = latency_parts(d.audio_delay(), d.windower.spec.after_s, d.ring.arrival_lag, d.delay.median_ready())
    if parts is not None:  # the audio delay split up; the parts sum to the total
        s["latency_ms"] = parts.as_ms()
    end = d.ring.end
    if end > 0:  # maps the sample indices frames carry to monotonic capture times
        s["clock"] = {"sample": end - 1, "monotonic": d.ring.time_of(end - 1), "sample_rate": d.ring.sample_rate}
    s["input_level_db"] = _level_db(d.ring)
    s["muted"] = d.muted  # the animation ignores the voice; the mic still plays it
    s["test_sync"] = d.sync.last
    if (h := d.audio.helper) is not None:  # the process the devices run in (audio/helper.py)
        s["audio_helper"] = {"pid": h.pid, "starts": h.starts, "last_exit": h.last_exit, "realtime": h.realtime_state}
    if d.audio.capture is not None:
        cs = d.audio.capture.stats
        s["capture"] = {k: getattr(cs, k) for k in ("nan_samples", "clipped_samples", "overflows")}
    return s


def _level_db(ring, seconds: float = 0.1) -> float:
    """RMS level (dBFS, floor -100) of the last ``seconds`` of input: the page's meter."""
    n = int(seconds * ring.sample_rate)
    end = ring.end
    if end - n < max(ring.start, 0):
        return -100.0
    try:
        x = ring.read(end - n, n)
    except RingRangeError:  # overwritten meanwhile
        return -100.0
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return round(max(-100.0, 20 * math.log10(rms)) if rms > 0 else -100.0, 1)


def status_line(s: dict, output: str) -> str:
    """One log line from :func:`status`; ``output`` is the configured audio output."""
    av = f"{s['av_offset_ms']:+.1f} ms" if "av_offset_ms" in s else \
        "n/a (no audio output yet)" if output != "none" else "n/a (no audio output)"
    return (f"fps {s['fps']:.1f} | engine ms p50 {s['engine_ms_p50']:.1f} p95 {s['engine_ms_p95']:.1f} | "
            f"queue {s['queue_depth']} | delay {s['delay_ms']:.0f} ms{_parts(s)} | A/V offset {av} | "
            f"repeated {s['frames_repeated']} skipped {s['windows_skipped']}{_down(s)}")


def _parts(s: dict) -> str:
    lat = s.get("latency_ms")
    if lat is None:
        return ""
    return (f" (audio {lat['total']:.0f} = capture {lat['capture']:.0f} + lookahead {lat['lookahead']:.0f}"
            f" + compute {lat['compute']:.0f} + buffering {lat['buffering']:.0f})")


def _down(s: dict) -> str:
    """What is down, for how long, and when it is tried next; nothing when all is well."""
    down = [f"{name} down {h['down_s']:.0f} s, retry in {h['next_retry_s']:.0f} s"
            for name, h in s.get("health", {}).items() if h["state"] != "ok"]
    return " | " + "; ".join(down) if down else ""
