"""latency_parts as a table: the audio delay split into capture, lookahead, compute and
buffering; the parts always sum to the delay."""

from __future__ import annotations

import pytest

from vcam_talker.latency import LatencyParts, latency_parts

# (audio delay, lookahead, arrival lags, median ready) -> parts (s)
TABLE = [
    ("classic", 0.150, 0.060, [0.010, 0.012, 0.011], 0.085, LatencyParts(0.011, 0.060, 0.014, 0.065)),
    ("sadtalker", 0.500, 0.3525, [0.02] * 5, 0.42, LatencyParts(0.02, 0.3525, 0.0475, 0.08)),
    ("demo source: no capture lag", 0.2, 0.06, [], 0.1, LatencyParts(0.0, 0.06, 0.04, 0.1)),
    ("capture over-estimated: compute goes negative, shown as is", 0.2, 0.06, [0.08], 0.1,
     LatencyParts(0.08, 0.06, -0.04, 0.1)),
]


@pytest.mark.parametrize("delay,lookahead,lags,ready,expected", [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_parts(delay, lookahead, lags, ready, expected):
    got = latency_parts(delay, lookahead, lags, ready)
    for k in ("capture_s", "lookahead_s", "compute_s", "buffering_s"):
        assert getattr(got, k) == pytest.approx(getattr(expected, k), abs=1e-9), k
    assert got.total_s == pytest.approx(delay, abs=1e-12)
    ms = got.as_ms()
    assert set(ms) == {"capture", "lookahead", "compute", "buffering", "total"} and ms["total"] == round(delay * 1e3, 1)


def test_nothing_measured_yet():
    assert latency_parts(0.2, 0.06, [0.01], None) is None
