"""Soak: the daemon as a real process for a long time, with an avatar swap every
--reload-every seconds, sampling its resident memory, open file descriptors and threads.

    .venv/bin/python benchmarks/soak.py              # 10 minutes
    .venv/bin/python benchmarks/soak.py --quick      # 60 s, what CI-sized runs use

Input is the bundled demo speech and output a recording pyvirtualcam backend that keeps
only frame times (so the recorder itself does not grow). Bounds, stated up front and
reported as pass/fail in the table: after the first sample window (imports, caches and
allocator warm-up), RSS grows less than 25 MB, and the fd and thread counts vary by at
most 2 (a reload briefly runs its watcher and prepare threads).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import report  # noqa: E402
from tests.conftest import DEFAULT_AVATAR  # noqa: E402
from tests.daemon_proc import DaemonProc, base_config, free_port, write_atomic  # noqa: E402

RSS_BOUND_MB = 25.0
COUNT_BOUND = 2


def sample(pid: int) -> tuple[float, int, int]:
    """(RSS in MB, open fds, threads) of a live process and its children (the daemon's
    audio helper), from /proc."""
    rss = fds = threads = 0
    for p in [pid, *children(pid)]:
        try:
            rss_kb = next(int(ln.split()[1]) for ln in Path(f"/proc/{p}/status").read_text().splitlines()
                          if ln.startswith("VmRSS:"))
            rss, fds, threads = rss + rss_kb, fds + len(os.listdir(f"/proc/{p}/fd")), \
                threads + len(os.listdir(f"/proc/{p}/task"))
        except (OSError, StopIteration):  # a child that just ended
            if p == pid:
                raise
    return rss / 1024, fds, threads


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:
        return []


def soak(seconds: float, reload_every: float = 30.0, every: float = 2.0) -> dict:
    """Runs the daemon for ``seconds``; returns the samples and the summary."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        second = tmp / "second.png"
        img = np.asarray(Image.open(DEFAULT_AVATAR).convert("RGB"))[:, ::-1]
        Image.fromarray(np.ascontiguousarray(img)).save(second)
        cfg = base_config(free_port())
        cfg["status"]["interval_s"] = 10.0
        avatars = [str(DEFAULT_AVATAR), str(second)]
        samples = []
        with DaemonProc(tmp, cfg, extra_env={"VCAM_RECORD_TIMES_ONLY": "1"}) as d:
            d.started()
            t0 = time.monotonic()
            next_reload, swaps = t0 + reload_every, 0
            while time.monotonic() - t0 < seconds:
                time.sleep(every)
                now = time.monotonic()
                if now >= next_reload:
                    swaps += 1
                    cfg["avatar"] = {"image": avatars[swaps % 2]}
                    write_atomic(d.config_path, cfg)
                    next_reload = now + reload_every
                rss, fds, threads = sample(d.proc.pid)
                st = d.status()
                samples.append((now - t0, rss, fds, threads, st["frames_emitted"], st["frames_repeated"]))
            status = d.status()
            d.terminate()
        reloads = d.count("reloaded (file changed)")
        errors = [ln for _, ln in d.lines if ": ERROR:" in ln]
    a = np.array(samples)
    warm = a[a[:, 0] > min(60.0, seconds / 3)]
    growth = float(warm[-1, 1] - warm[0, 1])
    fd_range = int(warm[:, 2].max() - warm[:, 2].min())
    thread_range = int(warm[:, 3].max() - warm[:, 3].min())
    return {"seconds": float(a[-1, 0]), "samples": a.tolist(), "rss_start_mb": float(warm[0, 1]),
            "rss_end_mb": float(warm[-1, 1]), "rss_growth_mb": growth, "fds": [int(warm[:, 2].min()),
            int(warm[:, 2].max())], "threads": [int(warm[:, 3].min()), int(warm[:, 3].max())],
            "fd_range": fd_range, "thread_range": thread_range, "avatar_swaps": swaps, "reloads": reloads,
            "frames_emitted": int(status["frames_emitted"]), "frames_repeated": int(status["frames_repeated"]),
            "errors": errors, "flat": growth < RSS_BOUND_MB and fd_range <= COUNT_BOUND
            and thread_range <= COUNT_BOUND}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="60 s with a swap every 10 s")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    seconds, every = (60.0, 10.0) if args.quick else (args.minutes * 60, 30.0)
    r = soak(seconds, reload_every=every)
    rows = [("duration", r["seconds"], "s"),
            ("RSS after warm-up", r["rss_start_mb"], "MB"),
            ("RSS at the end", r["rss_end_mb"], "MB"),
            (f"RSS growth (bound {RSS_BOUND_MB:.0f})", r["rss_growth_mb"], "MB"),
            ("open fds min", r["fds"][0], "fds"), ("open fds max", r["fds"][1], "fds"),
            ("threads min", r["threads"][0], "threads"), ("threads max", r["threads"][1], "threads"),
            ("avatar swaps (reloads applied)", r["reloads"], "count"),
            ("frames emitted", r["frames_emitted"], "frames"),
            ("frames repeated", r["frames_repeated"], "frames"),
            ("flat within bounds (1 = yes)", float(r["flat"]), "bool")]
    report("soak", rows, extra={k: r[k] for k in ("samples", "errors", "avatar_swaps")}, out=args.json)


if __name__ == "__main__":
    main()
