"""One sync for every output, measured from outside (tests/avsync.py): dlib's lips on the
decoded frames against the output's own audio, sub-frame, by the container's timestamps.

Before the fix the offline render showed the mouth 23-25 ms after the voice (the audio was
muxed at the frames' start although a frame is seen for a whole period), and the daemon's
recording showed it 48-103 ms before (each frame was muxed with the period of audio that
ends at its instant, plus a backlog that grew whenever the pipeline delay settled).
`benchmarks/bench_sync.py` gives the camera, the recording and the render on three voices.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from tests.avsync import espeak_voice, face_crop, mp4_offset
from tests.conftest import DEFAULT_AVATAR, ROOT
from tests.daemon_proc import DaemonProc, base_config, free_port
from vcam_talker.frames import AudioSpan, VideoFrame
from vcam_talker.sinks.timeline import RecordingTimeline

#: the issue's bound; measured here: +4 ms for both
TOLERANCE_S = 0.020


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """Where dlib looks: the face of the default avatar in a 512x512 frame."""
    from vcam_talker.config import Config
    from vcam_talker.engines.classic.engine import ClassicEngine

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VCAM_TALKER_CACHE", str(tmp_path_factory.mktemp("cache")))
        return face_crop(ClassicEngine(Config()).prepare(DEFAULT_AVATAR).landmarks, (512, 512))


def check(mp4, crop, what: str) -> None:
    off, corr = mp4_offset(mp4, crop)
    ctl, _ = mp4_offset(mp4, crop, audio_shift_s=0.1)
    print(f"\n{what}: mouth {off * 1e3:+.0f} ms after the voice (r {corr:.2f}); "
          f"audio 100 ms later: {ctl * 1e3:+.0f} ms")
    assert corr > 0.6, "the lips do not follow the voice at all"
    # the control: the same measurement sees a 100 ms shift as 100 ms
    assert abs((off - ctl) - 0.1) <= 0.005, (off, ctl)
    assert abs(off) <= TOLERANCE_S, f"{what}: mouth {off * 1e3:+.0f} ms after the voice"


def test_offline_render_is_in_sync(tmp_path, crop):
    wav = tmp_path / "de.wav"
    x = espeak_voice(wav, "Guten Morgen. Papa kauft eine große Karte, und wir sprechen über Zahlen.", "de")
    assert len(x) > 16000
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"engine": {"classic": {"sway": 0.0}}}))
    out = tmp_path / "out.mp4"
    r = subprocess.run([sys.executable, "-m", "vcam_talker", "render", "--audio", str(wav), "--out", str(out),
                        "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "VCAM_TALKER_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    check(out, crop, "offline render")


def test_daemon_recording_is_in_sync(tmp_path, crop):
    """`run --demo` recording through the ffmpeg sink, the issue's case; the pipeline delay
    settles during the run, which is what used to push the recorded voice late."""
    mp4 = tmp_path / "rec.mp4"
    cfg = base_config(free_port(), sinks={"ffmpeg": {"enabled": True, "target": str(mp4)}})
    with DaemonProc(tmp_path, cfg) as d:
        d.started()
        time.sleep(10.0)
        d.terminate()
    assert d.count("failed (") == 0, "\n".join(ln for _, ln in d.lines)
    check(mp4, crop, "daemon recording")


# ---- the recorder's timeline, unit by unit ---------------------------------------------
RATE, FPS = 16000, 25
PERIOD = RATE // FPS


def simulate(ticks):
    """Feeds RecordingTimeline the ticks [(frame index, due sample, repeated)] with audio
    [previous due, due) whose values are their own ring indices. Returns the container's
    audio and, per slot, (the ring sample its picture shows, whether that is the slot's
    own frame: not a repeat, nor the previous picture kept for a missed tick)."""
    tl = RecordingTimeline(RATE, FPS)
    audio, slots, prev, shown = [], [], None, -1
    for index, due, repeated in ticks:
        start = due - PERIOD if prev is None or due - prev > RATE else prev  # a stall: from the live edge
        prev = due
        before, shown = shown, shown if repeated else (index * RATE * 2 + FPS) // (2 * FPS)
        frame = VideoFrame(index=index, t=0.0, image=np.zeros((1, 1, 3), np.uint8), repeated=repeated, sample=shown)
        placed = tl.place(frame, AudioSpan.of(np.arange(start, due, dtype=np.float32), start))
        if placed is None:
            continue
        chunk, copies = placed
        audio.append(chunk)
        slots += [(before, False)] * (copies - 1) + [(shown, not repeated)] * min(copies, 1)
    return np.concatenate(audio), slots, tl


def assert_mid_frame(audio, slots):
    """Each frame is heard mid-frame: the container's audio there is its own sample."""
    for slot, (shown, own) in enumerate(slots):
        if own:
            assert audio[slot * PERIOD + PERIOD // 2] == shown, (slot, audio[slot * PERIOD + PERIOD // 2], shown)


def test_timeline_jitter_and_a_settling_delay_move_nothing():
    rng = np.random.default_rng(0)
    ticks, due_shift = [], 0
    for i in range(10, 300):
        if i == 100:
            due_shift = 960  # the pipeline delay fell by 60 ms: the pacer hands more audio once
        ticks.append((i, i * PERIOD + due_shift + int(rng.integers(-48, 49)), False))
    audio, slots, tl = simulate(ticks)
    assert_mid_frame(audio, slots)
    assert np.all(np.diff(audio[PERIOD:]) == 1)  # continuous: nothing padded, nothing dropped
    assert tl.gaps == tl.duplicated == tl.late == 0 and all(own for _, own in slots)


def test_timeline_closes_a_stall_and_keeps_the_picture_for_a_missed_tick():
    ticks = [(i, i * PERIOD + 16, False) for i in range(10, 60)]
    ticks += [(i, i * PERIOD + 16, False) for i in range(800, 850)]  # 30 s stalled: the live edge
    ticks += [(850, 850 * PERIOD + 16, True), (852, 852 * PERIOD + 16, False)]  # late, then a missed tick
    ticks += [(i, i * PERIOD + 16, False) for i in range(853, 870)]
    audio, slots, tl = simulate(ticks)
    assert_mid_frame(audio, slots)
    assert tl.gaps == 1 and len(audio) < 200 * PERIOD  # the gap closed up, not 30 s of silence
    assert tl.duplicated == 1 and tl.late == 0
    # the missed tick's slot keeps the picture that was on screen (the repeat's)
    i = slots.index((852 * PERIOD, True))
    assert slots[i - 1] == (849 * PERIOD, False) and slots[i - 2] == (849 * PERIOD, False)


def test_timeline_drops_audio_it_was_handed_twice():
    # a restarted video stage's pacer starts a period before the live edge, re-reading
    # samples the old one had handed over already
    ticks = [(i, i * PERIOD + 16, False) for i in range(10, 60)]
    audio, slots, tl = simulate(ticks)
    start = 59 * PERIOD + 16 - 100
    frame = VideoFrame(index=60, t=0.0, image=np.zeros((1, 1, 3), np.uint8), sample=60 * PERIOD)
    chunk, copies = tl.place(frame, AudioSpan.of(np.arange(start, 60 * PERIOD + 16, dtype=np.float32), start))
    assert chunk[0] == audio[-1] + 1 and copies == 1 and tl.gaps == 0
