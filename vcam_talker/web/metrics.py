"""GET /metrics: the daemon's numbers in the Prometheus text format.

Its own CollectorRegistry (never the process-global one, which a test or a second
daemon in the process would share). One custom collector reads ``daemon.status()`` at
scrape time, so counters and gauges cost nothing between scrapes.

The two histograms are fed at scrape time from the pipeline's bounded deques
(``stats.engine_ms``, ``stats.ready_s``; 500 entries each): the observations appended
since the previous scrape are found by identity (each append is a new float object; the
last one seen is kept, so its id cannot be reused) and added to cumulative buckets. At
25 fps a scrape interval up to 20 s loses nothing; with longer ones the oldest
observations of the interval are not counted.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

ENGINE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
READY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)

# (status key, metric name without _total, help)
COUNTERS = (
    ("frames_published", "frames_published", "Frames that reached at least one open sink."),
    ("frames_rendered", "frames_rendered", "Frames the engine rendered."),
    ("frames_repeated", "frames_repeated", "Frame slots filled by repeating the previous frame."),
    ("windows_skipped", "windows_skipped", "Audio windows skipped to stay live."),
    ("engine_errors", "engine_errors", "Frames the engine failed on."),
    ("reloads", "reloads", "Config reloads applied."),
    ("reload_errors", "reload_errors", "Config reloads refused."),
    ("stalls", "stalls", "Whole-process stalls detected (suspend, SIGSTOP)."),
    ("thread_restarts", "thread_restarts", "Pipeline threads revived after dying."),
    ("audio_skipped_samples", "audio_skipped_samples", "Captured samples skipped after stalls."),
)
PLAYBACK = (
    ("underflows", "playback_underflows", "Virtual mic output underflows."),
    ("lost_samples", "playback_lost_samples", "Samples lost by the virtual mic output."),
    ("inserted_frames", "playback_inserted_frames", "Frames inserted to keep the mic delay."),
    ("removed_samples", "playback_removed_samples", "Samples removed to keep the mic delay."),
    ("resyncs", "playback_resyncs", "Hard resyncs of the mic delay."),
)


class _Histogram:
    """Cumulative buckets fed from a bounded deque of new observations."""

    def __init__(self, buckets: tuple[float, ...], scale: float):
        self.bounds = buckets
        self.scale = scale  # the deque's unit to seconds
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self._last: object = None

    def feed(self, source: deque) -> None:
        snap = list(source)  # one C-level copy: consistent under the GIL
        start = 0
        if self._last is not None:
            for i in range(len(snap) - 1, -1, -1):
                if snap[i] is self._last:
                    start = i + 1
                    break
        for v in snap[start:]:
            s = v * self.scale
            self.counts[bisect_left(self.bounds, s)] += 1
            self.sum += s
        if snap:
            self._last = snap[-1]

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cum, buckets = 0, []
        for bound, c in zip([*map(str, self.bounds), "+Inf"], self.counts):
            cum += c
            buckets.append((bound, cum))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


class DaemonCollector:
    def __init__(self, daemon):
        self.daemon = daemon
        self._lock = threading.Lock()
        self.engine = _Histogram(ENGINE_BUCKETS, 1e-3)
        self.ready = _Histogram(READY_BUCKETS, 1.0)

    def collect(self):
        d = self.daemon
        s = d.status()
        p = "vcam_talker_"
        for key, name, doc in COUNTERS:
            if key in s:
                yield CounterMetricFamily(p + name, doc, value=s[key])
        for key, name, doc in PLAYBACK:
            if key in s.get("playback", {}):
                yield CounterMetricFamily(p + name, doc, value=s["playback"][key])
        for key, value in s.get("capture", {}).items():
            yield CounterMetricFamily(f"{p}capture_{key}", f"Audio capture {key.replace('_', ' ')}.", value=value)
        yield GaugeMetricFamily(p + "fps", "Frames published per second over the last 2 s.", value=s["fps"])
        yield GaugeMetricFamily(p + "video_delay_seconds", "Capture-to-frame delay the pacer keeps.",
                                value=s["delay_ms"] / 1e3)
        yield GaugeMetricFamily(p + "queue_depth", "Rendered frames waiting to be shown.", value=s["queue_depth"])
        yield GaugeMetricFamily(p + "uptime_seconds", "Seconds since the daemon started.", value=s["uptime_s"])
        if "audio_delay_ms" in s:
            yield GaugeMetricFamily(p + "audio_delay_seconds", "Current delay of the virtual mic.",
                                    value=s["audio_delay_ms"] / 1e3)
            yield GaugeMetricFamily(p + "av_offset_seconds", "Mic delay minus the delay the picture needs.",
                                    value=s["av_offset_ms"] / 1e3)
        if "clock_ratio" in s.get("playback", {}):
            yield GaugeMetricFamily(p + "audio_clock_ratio", "The input clock's rate against the system "
                                    "clock, as the mic learnt it (its base speed).", value=s["playback"]["clock_ratio"])
        up = GaugeMetricFamily(p + "up", "1 when the part works (input, output, each sink), else 0.",
                               labels=["part"])
        if s["input"] == "demo" and "input" not in s["health"]:
            up.add_metric(["input"], 1.0)
        for part, h in s["health"].items():
            up.add_metric([part], 1.0 if h["state"] == "ok" else 0.0)
        yield up
        info = GaugeMetricFamily(p + "engine_info", "The engine rendering now.", labels=["engine"])
        info.add_metric([s["engine"]], 1.0)
        yield info
        with self._lock:  # two scrapes at once must not count one observation twice
            self.engine.feed(d.stats.engine_ms)
            self.ready.feed(d.stats.ready_s)
            hists = (self.engine.family(p + "engine_latency_seconds", "Time the engine took per frame."),
                     self.ready.family(p + "frame_ready_seconds",
                                       "From the capture of a frame's audio to the frame being rendered."))
        yield from hists


class Metrics:
    """One registry per server."""

    def __init__(self, daemon):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(daemon))

    def render(self) -> bytes:
        return generate_latest(self.registry)
