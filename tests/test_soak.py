"""The short soak (benchmarks/soak.py's CI mode): a real daemon process swapping avatars
every few seconds must not leak memory, file descriptors or threads. Timings are the
benchmark's business; this asserts only the resource bounds it states."""

from __future__ import annotations

from benchmarks.soak import COUNT_BOUND, RSS_BOUND_MB, soak


def test_short_soak_resources_stay_flat():
    r = soak(30.0, reload_every=4.0, every=1.0)
    print(f"\nsoak 30 s: RSS {r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} MB, fds {r['fds']}, "
          f"threads {r['threads']}, {r['reloads']} reloads, {r['frames_repeated']} frames repeated")
    assert r["reloads"] >= 5 and not r["errors"], r["errors"]
    assert r["rss_growth_mb"] < RSS_BOUND_MB
    assert r["fd_range"] <= COUNT_BOUND and r["thread_range"] <= COUNT_BOUND
