"""Test sync and mute against the live daemon on a private PulseAudio (the recording camera,
the delayed mic into vcam_mic, whose monitor the test records)."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest

from tests.conftest import DEFAULT_AVATAR
from tests.live_harness import RATE, envelope, live_config, mouth_box
from tests.recording_cam import RecordingCamera, register
from vcam_talker.audio.capture import AudioCapture
from vcam_talker.audio.ring import AudioRing
from vcam_talker.daemon import Daemon
from vcam_talker.engines.classic.engine import ClassicEngine


@pytest.fixture(scope="module")
def live(pulse_server, tmp_path_factory):
    """(daemon, mic recording ring, its camera): a settled live daemon."""
    os.environ.setdefault("VCAM_TALKER_CACHE", str(tmp_path_factory.mktemp("cache")))
    crop = mouth_box(ClassicEngine, DEFAULT_AVATAR)
    register()
    RecordingCamera.crop = crop
    mic = AudioRing(RATE, 120.0)
    rec = AudioCapture("vcam_mic_monitor", mic).start()
    d = Daemon(live_config(status={"http": ""}))
    d.start()
    try:
        assert d.first_frame.wait(10)
        cam = RecordingCamera.instances[-1]
        # the first seconds' delay estimates move the frame grid: the first flashes there
        # come up to a frame late (test sync shows it; status's A/V offset, the mic only, does not)
        time.sleep(5.0)
        settled(d)
        yield d, mic, cam
    finally:
        d.stop()
        rec.stop()


def settled(d: Daemon, timeout: float = 10.0) -> dict:
    """The status once the delay has held still for a second and the mic is on it (the
    delay's first estimates, or a change under load, glide in)."""
    deadline, last = time.monotonic() + timeout, None
    st: dict = {}
    while time.monotonic() < deadline:
        time.sleep(0.5)
        st = d.status()
        if st["delay_ms"] == last and abs(st.get("av_offset_ms", 99)) < 3.0:
            break
        last = st["delay_ms"]
    return st


def click_times(mic: AudioRing, start: int) -> tuple[np.ndarray, np.ndarray]:
    """(ring indices, monotonic times) of the click bursts recorded since index ``start``."""
    x = mic.read(start, mic.end - start)
    env = envelope(x, hop_s=0.001)
    loud = env > 0.3
    first = np.flatnonzero(loud & ~np.concatenate([[False], loud[:-1]]))
    first = first[np.concatenate([[True], np.diff(first) > 100])]  # one per burst (0.1 s apart at least)
    hop = int(RATE * 0.001)
    idx = start + first * hop
    return idx, np.array([mic.time_of(int(i)) for i in idx])


def test_test_sync_measures_a_click_and_a_flash(live, capsys):
    d, mic, cam = live
    before = settled(d)
    n_cam, start = len(cam.snapshot()[0]), mic.end
    res = d.test_sync()
    time.sleep(0.5)
    idx, clicks = click_times(mic, start)
    times, frames = cam.snapshot()
    times, frames = times[n_cam:], frames[n_cam:]
    flashes = times[frames.reshape(len(frames), -1).min(1) == 255]
    first_flash = flashes[np.concatenate([[True], np.diff(flashes) > 0.1])] if len(flashes) else flashes
    with capsys.disabled():
        print(f"\ntest sync: {res['offsets_ms']} ms, median {res.get('median_ms')} ms, ok {res['ok']}; "
              f"clicks in the mic recording {np.round(np.diff(idx) / RATE * 1e3, 1)} ms apart (reported "
              f"{np.round(np.diff(res['click_dac']) * 1e3, 1)}), recorded {np.round((clicks - res['click_dac']) * 1e3, 1)} "
              f"ms after their DAC times; flash frames at the camera {len(flashes)}; status A/V offset before "
              f"{before.get('av_offset_ms')} ms, after {d.status().get('av_offset_ms')} ms")
    assert "error" not in res, res
    assert len(res["offsets_ms"]) == 3 and abs(res["median_ms"]) <= 40.0 and res["ok"]
    assert d.status()["test_sync"] == res
    # the clicks really are in the mic, where and when the playback said it played them
    assert len(clicks) == 3, clicks
    # their spacing in recorded samples is their spacing in DAC time (the recorder's clock
    # estimate jitters by ms under load, so only the absolute lag is checked on it)
    assert np.abs(np.diff(idx) / RATE - np.diff(res["click_dac"])).max() < 0.002
    lag = clicks - np.array(res["click_dac"])
    assert -0.03 < np.median(lag) < 0.1, lag
    # and the flashes reached the camera when the pacer said: one white frame per mark
    assert len(first_flash) == 3 and len(flashes) <= 9, flashes  # a flash is one frame (or its repeats)
    assert np.abs(first_flash - np.array(res["flash_published"])).max() < 0.01


def test_test_sync_without_audio_output_says_why(tmp_path):
    os.environ.setdefault("VCAM_TALKER_CACHE", str(tmp_path / "cache"))
    register()
    d = Daemon(live_config(audio={"input": "demo", "output": "none"}, status={"http": ""}))
    d.start()
    try:
        assert d.first_frame.wait(10)
        res = d.test_sync(timeout=1.0)
    finally:
        d.stop()
    assert res["ok"] is False and "no audio output" in res["error"]


def _mouth_motion(frames: np.ndarray) -> float:
    """How much the mouth moves: the 90th percentile of each frame's mean absolute
    difference from the run's median frame."""
    f = frames.astype(np.float32)
    return float(np.percentile(np.abs(f - np.median(f, axis=0)).mean(axis=(1, 2, 3)), 90))


def test_mute_keeps_the_mouth_still_and_the_mic_playing(live, speech_wav, pulse_server, capsys):
    d, mic, cam = live
    out = {}
    for muted in (False, True):
        d.set_muted(muted)
        time.sleep(0.5)  # frames already rendered drain
        n0, m0 = len(cam.snapshot()[0]), mic.end
        subprocess.run(["paplay", "--device=vcam_in", str(speech_wav)], env=pulse_server.env, check=True, timeout=30)
        time.sleep(2.0)  # the delayed mic's tail
        _, frames = cam.snapshot()
        x = mic.read(m0, mic.end - m0)
        out[muted] = (_mouth_motion(frames[n0:]), float(np.sum(x.astype(np.float64) ** 2)), d.status()["muted"])
    d.set_muted(False)
    with capsys.disabled():
        print(f"\nmute: mouth motion {out[False][0]:.2f} speaking, {out[True][0]:.2f} muted; "
              f"mic energy {out[False][1]:.1f} unmuted, {out[True][1]:.1f} muted")
    assert out[True][2] is True and out[False][2] is False
    assert out[False][0] > 2.0  # the speech does move the mouth
    assert out[True][0] < 0.2 * out[False][0]
    assert out[True][1] > 0.7 * out[False][1]  # the whole voice still reaches the meeting


def test_click_track_places_the_burst_by_ring_position_across_blocks():
    from vcam_talker.web.syncprobe import ClickTrack, Mark, click_burst

    rate, block = 48000, 480  # 10 ms device blocks, each playing 160 samples of a 16 kHz ring
    burst = click_burst(rate)  # 240 device samples
    marks = [Mark(0, 1000 + 155), Mark(1, 1000 + 2 * 160 + 120)]  # the second spills into block 3
    track = ClickTrack(marks)
    outs = []
    for b in range(4):
        out = np.zeros(block, np.float32)
        p0 = 1000 + b * 160
        track.apply(out, 0, block, p0, p0 + 160, 10.0 + b * 0.01, rate)
        outs.append(out)
    y = np.concatenate(outs)
    assert np.allclose(y[465:465 + len(burst)], burst)  # ring sample 1155: 155 * 3 device samples in
    second = 2 * block + 360
    assert np.allclose(y[second:second + len(burst)], burst)  # whole, across the block boundary
    assert np.count_nonzero(y) == np.count_nonzero(burst) * 2
    assert abs(marks[0].dac - (10.0 + 465 / rate)) < 1e-9 and abs(marks[1].dac - (10.02 + 360 / rate)) < 1e-9
    # a block that starts past a marked sample (spliced away in silence) clicks where it starts
    late = Mark(2, 500)
    out = np.zeros(block, np.float32)
    ClickTrack([late]).apply(out, 30, block - 30, 600.0, 760.0, 20.0, rate)
    assert late.dac == 20.0 + 30 / rate and np.allclose(out[30:30 + len(burst)], burst)
