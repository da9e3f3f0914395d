"""Realtime scheduling for the audio helper's threads (``audio.realtime``).

On a saturated CPU a normal thread waits for its turn behind every busy process; the
helper's threads (the PortAudio callbacks, libpulse's client thread, the capture's
worker and the request loop that shares their GIL) then miss their deadlines and the mic
plays a gap. Sound servers and their clients run such threads SCHED_FIFO. Every thread of
the helper is promoted, the request loop included: a normal-priority thread holding the
GIL would stall the realtime ones behind it.

Permission: root, CAP_SYS_NICE, or an RLIMIT_RTPRIO of at least :data:`PRIORITY` (a
systemd unit's ``LimitRTPRIO=``, or limits.conf for the user's session). Without it the
threads stay as they are and the reason is reported once; rtkit's D-Bus service is not
asked (decided, for the reasons the README gives: measured no help on PipeWire, and its
polkit action needs a logind session, so it cannot be tested here).

A runaway is bounded: RLIMIT_RTTIME sends SIGXCPU to a thread that runs 200 ms at
realtime without sleeping, and :func:`guard` then puts every thread back to normal
scheduling (SIGKILL at 400 ms, should that fail). One such thread was found: PortAudio's
capture thread on PulseAudio polls busily (56-70 % of a core) until its stream delivers
its first block, 1-2 s on a fresh server; so the helper promotes only after that block.
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable

#: below the sound server's own I/O threads (PulseAudio's default 5, PipeWire's 88)
PRIORITY = 4
#: (soft, hard) microseconds of CPU at realtime without a blocking call
RTTIME_US = (200_000, 400_000)


def threads() -> list[int]:
    """Thread ids of this process."""
    return sorted(int(t) for t in os.listdir("/proc/self/task"))


def apply(priority: int) -> str:
    """Every thread of this process to SCHED_FIFO at ``priority`` (0: back to normal
    scheduling); returns what was done, in a few words ("SCHED_FIFO 4, 7 threads", or
    why not)."""
    if not hasattr(os, "sched_setscheduler"):
        return "not supported on this system"
    if priority > 0:
        try:
            resource.setrlimit(resource.RLIMIT_RTTIME, RTTIME_US)
        except (ValueError, OSError) as exc:
            return f"not enabled: RLIMIT_RTTIME: {exc}"
        policy, param = os.SCHED_FIFO, os.sched_param(priority)
    else:
        policy, param = os.SCHED_OTHER, os.sched_param(0)
    done = 0
    for tid in threads():
        try:
            os.sched_setscheduler(tid, policy, param)
            done += 1
        except ProcessLookupError:  # it just ended
            continue
        except PermissionError:
            limit = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
            return (f"not permitted (RLIMIT_RTPRIO {limit}, needs {priority}: LimitRTPRIO= in the "
                    f"unit or rtprio in limits.conf)")
    return f"SCHED_FIFO {priority}, {done} threads" if priority > 0 else f"normal, {done} threads"


def guard(dropped: Callable[[str], None]) -> None:
    """On SIGXCPU (a thread ran :data:`RTTIME_US` at realtime without sleeping): every
    thread back to normal, and ``dropped(why)``. Call from the main thread."""
    def on_xcpu(signum, frame) -> None:
        apply(0)
        dropped(f"dropped: a thread ran {RTTIME_US[0] // 1000} ms at realtime without sleeping")
    signal.signal(signal.SIGXCPU, on_xcpu)
