"""audio.realtime: the helper's threads run SCHED_FIFO where the user may, go back to
normal when it is turned off, and without permission stay normal, keep working and say
why. Against a real helper process and a real sound server; the scheduling is read back
from the kernel for every thread of the helper."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from vcam_talker.audio import realtime
from vcam_talker.audio.helper import AudioHelper, RemoteCapture, RemotePlayback
from vcam_talker.audio.ring import AudioRing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def policies(pid: int) -> dict[int, tuple[int, int]]:
    """(policy, priority) of each thread of ``pid``, as the kernel has them."""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(t)] = (os.sched_getscheduler(int(t)), os.sched_getparam(int(t)).sched_priority)
        except ProcessLookupError:
            continue
    return out


def rttime_limit(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as f:
        return next(" ".join(ln.split()[3:5]) for ln in f if ln.startswith("Max realtime timeout"))


def may_use_realtime() -> bool:
    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] >= realtime.PRIORITY


def wait_for_state(helper: AudioHelper, prefix: str, timeout: float = 8.0) -> str:
    """The helper's realtime state once it starts with ``prefix`` (a promotion waits for the
    input's first block, in a thread of the helper's own)."""
    deadline = time.monotonic() + timeout
    while not (state := helper.realtime_state).startswith(prefix) and time.monotonic() < deadline:
        time.sleep(0.05)
    return state


def play_a_second(ring: AudioRing, t0: float) -> None:
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(160) / 16000)).astype(np.float32)
    for i in range(100):
        ring.write(tone, t0 + (ring.end / 16000))
        time.sleep(max(0.0, t0 + ring.end / 16000 - time.monotonic()))


@pytest.mark.skipif(not may_use_realtime(), reason="needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO of 4")
def test_helper_threads_run_realtime_and_back_to_normal(pulse_server):
    ring = AudioRing(16000, 5.0, shared=True)
    helper = AudioHelper(ring)
    helper.realtime = realtime.PRIORITY
    try:
        # the capture writes the ring (the monitor's silence) and the mic plays it
        cap = RemoteCapture(helper, "vcam_in_monitor", {}).start()
        pb = RemotePlayback(helper, "vcam_mic_sink", {"target_delay": 0.15}).start()
        pid = helper.pid
        assert pid is not None, helper.last_exit
        state = wait_for_state(helper, "SCHED_FIFO")  # after the input's first block
        time.sleep(1.0)
        got = policies(pid)
        # every thread: the request loop, the capture's worker, PortAudio's and libpulse's
        assert len(got) >= 4 and set(got.values()) == {(os.SCHED_FIFO, realtime.PRIORITY)}, (state, got)
        # (the count includes the promoting threads, which then end)
        assert state.startswith(f"SCHED_FIFO {realtime.PRIORITY}, ") and int(state.split()[2]) >= len(got), state
        assert rttime_limit(pid) == "200000 400000"  # a runaway thread gets SIGXCPU
        assert pb.stats.callbacks > 50 and pb.error is None and cap.error is None
        # turned off (a reload reopens both ends): back to normal scheduling
        helper.realtime = 0
        pb.stop()
        pb = RemotePlayback(helper, "vcam_mic_sink", {"target_delay": 0.15}).start()
        state = wait_for_state(helper, "normal")
        got = policies(pid)
        assert set(got.values()) == {(os.SCHED_OTHER, 0)}, got
    finally:
        helper.close()


@pytest.mark.skipif(not may_use_realtime(), reason="needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO of 4")
def test_a_failed_open_leaves_normal_threads_until_a_good_one(pulse_server):
    """An open demotes the helper first (a new stream's threads inherit the policy). When
    it fails (the device is away and the supervisor retries every second), the helper
    stays at normal priority and the mic plays on; the next good open promotes it again.
    (Promoting after each failed retry was tried: it hung the helper for over 20 s while
    PipeWire restarted under --load 1.)"""
    from vcam_talker.errors import DeviceError

    ring = AudioRing(16000, 5.0, shared=True)
    helper = AudioHelper(ring)
    helper.realtime = realtime.PRIORITY
    try:
        pb = RemotePlayback(helper, "vcam_mic_sink", {"target_delay": 0.15}).start()
        assert wait_for_state(helper, "SCHED_FIFO").startswith("SCHED_FIFO"), helper.realtime_state
        with pytest.raises(DeviceError):
            RemoteCapture(helper, "no-such-input-device", {}).start()
        time.sleep(0.3)
        assert helper.realtime_state.startswith("normal"), helper.realtime_state
        assert set(policies(helper.pid).values()) == {(os.SCHED_OTHER, 0)}
        calls = pb.stats.callbacks
        time.sleep(0.5)
        assert pb.stats.callbacks > calls and pb.error is None  # the mic played on
        RemoteCapture(helper, "vcam_in_monitor", {}).start()  # the device is back
        state = wait_for_state(helper, "SCHED_FIFO")
        assert state.startswith(f"SCHED_FIFO {realtime.PRIORITY}"), state
        assert set(policies(helper.pid).values()) == {(os.SCHED_FIFO, realtime.PRIORITY)}
    finally:
        helper.close()


CHILD = textwrap.dedent("""
    import json, os, sys, time
    from vcam_talker.audio import realtime
    from vcam_talker.audio.helper import AudioHelper, RemotePlayback
    from vcam_talker.audio.ring import AudioRing
    from tests.test_audio_realtime import play_a_second, policies
    ring = AudioRing(16000, 5.0, shared=True)
    helper = AudioHelper(ring)
    helper.realtime = realtime.PRIORITY
    pb = RemotePlayback(helper, "vcam_mic_sink", {"target_delay": 0.15}).start()
    play_a_second(ring, time.monotonic())
    deadline = time.monotonic() + 8
    while helper.realtime_state.startswith("pending") and time.monotonic() < deadline:
        time.sleep(0.05)
    out = {"state": helper.realtime_state, "policies": list(policies(helper.pid).values()),
           "callbacks": pb.stats.callbacks, "error": str(pb.error) if pb.error else None}
    helper.close()
    print(json.dumps(out))
""")


def test_without_permission_the_threads_stay_normal_and_it_says_why(pulse_server):
    """Where the user may not (no CAP_SYS_NICE, RLIMIT_RTPRIO 0, as on most desktops
    without limits.conf), the helper keeps normal threads, plays on, and says why."""
    cmd = [sys.executable, "-c", CHILD]
    if os.geteuid() == 0:  # root may: drop CAP_SYS_NICE, as a user's session has none
        cmd = ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", *cmd]

    def no_rtprio() -> None:
        resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))

    r = subprocess.run(cmd, cwd=ROOT, env=pulse_server.env, capture_output=True, text=True, timeout=60,
                       preexec_fn=no_rtprio)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["state"].startswith("not permitted (RLIMIT_RTPRIO 0, needs 4"), out
    assert {tuple(p) for p in out["policies"]} == {(os.SCHED_OTHER, 0)}, out
    assert out["callbacks"] > 50 and out["error"] is None, out


RUNAWAY = textwrap.dedent("""
    import os, threading, time
    import numpy as np
    from vcam_talker.audio import realtime
    said = []
    realtime.guard(said.append)
    print(realtime.apply(realtime.PRIORITY), flush=True)
    a = np.random.default_rng(0).standard_normal((700, 700))

    def spin():  # numpy without the GIL and without a system call: never sleeps
        t = time.monotonic()
        while time.monotonic() - t < 1.5:
            a @ a
    th = threading.Thread(target=spin)
    th.start()
    while th.is_alive():
        time.sleep(0.05)
    kinds = {os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")}
    print(said, kinds == {os.SCHED_OTHER}, flush=True)
""")


@pytest.mark.skipif(not may_use_realtime(), reason="needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO of 4")
def test_a_thread_that_never_sleeps_loses_realtime_not_the_process():
    """RLIMIT_RTTIME's SIGXCPU after 200 ms: every thread back to normal, said once; the
    hard limit (SIGKILL at 400 ms) is not reached."""
    r = subprocess.run([sys.executable, "-c", RUNAWAY], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    first, last = r.stdout.strip().splitlines()[-2:]
    assert first.startswith(f"SCHED_FIFO {realtime.PRIORITY}"), r.stdout
    assert last == "['dropped: a thread ran 200 ms at realtime without sleeping'] True", r.stdout
