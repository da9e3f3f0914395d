"""Keeping the live threads alive: per-iteration exception accounting, and replacing a
thread that ended anyway."""

from __future__ import annotations

import logging

log = logging.getLogger("vcam_talker.stream.pipeline")


class LoopGuard:
    """What a live loop does with an exception: count it (per thread, in the stats) and
    log the first of each kind in one line, the traceback at debug level only, so a
    fault repeated every frame neither kills the thread nor floods the log."""

    def __init__(self, name: str, stats):
        self.name, self.stats = name, stats
        self._seen: set[str] = set()

    def failed(self, exc: BaseException) -> None:
        self.stats.loop_errors[self.name] = self.stats.loop_errors.get(self.name, 0) + 1
        kind = type(exc).__name__
        if kind not in self._seen:
            self._seen.add(kind)
            log.error("%s: %s: %s; carrying on (counted in status as loop_errors)", self.name, kind,
                      " ".join(str(exc).split())[:300])
            log.debug("%s failed", self.name, exc_info=exc)


def revive_dead(threads: list) -> list:
    """Replace each pipeline thread that ended although its stop event is clear (it can
    only be a bug: every iteration is guarded) with a fresh one carrying its state.
    Returns ``threads`` itself when all are alive, else the new list. Called by the
    daemon's control loop."""
    out, changed = [], False
    for t in threads:
        if t.is_alive() or t.stop_event.is_set() or t.ident is None:
            out.append(t)
            continue
        fresh = t.respawn()
        fresh.start()
        t.stats.thread_restarts += 1
        log.error("%s thread had ended; restarted it (%d restarts so far)", t.name, t.stats.thread_restarts)
        out.append(fresh)
        changed = True
    return out if changed else threads
