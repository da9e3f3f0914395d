"""The live daemon against a real PulseAudio server: espeak-ng speech with silence gaps is
played into vcam_in; the daemon captures vcam_in's monitor, publishes frames to a
recording pyvirtualcam backend and plays the delayed speech into vcam_mic, whose monitor
the test records. Only correctness is asserted; timings are printed (see bench_live.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conftest import DEFAULT_AVATAR, espeak_wav
from tests.live_harness import (RATE, av_offset_xcorr, av_offsets, envelope, lag_by_xcorr, live_config,
                                onsets, run_daemon, speech_with_gaps)
from vcam_talker.engines.classic.engine import ClassicEngine

FPS = 25
TEXTS = ["Hello, can you hear me?", "Papa bought a big map.", "Yes, we are in sync.", "Good morning to you all."]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speech_with_gaps(espeak_wav, tmp_path_factory.mktemp("live"), TEXTS)


@pytest.fixture(scope="module")
def mouth_crop(tmp_path_factory):
    import os

    os.environ.setdefault("VCAM_TALKER_CACHE", str(tmp_path_factory.mktemp("cache")))
    av = ClassicEngine(live_config()).prepare(DEFAULT_AVATAR)
    (x0, y0), (x1, y1) = av.landmarks[48:68].min(0) - 10, av.landmarks[48:68].max(0) + 10
    return int(y0), int(y1), int(x0), int(x1)


def check_audio_complete(run):
    """Every utterance arrives in the mic, whole. Per utterance, the mic segment aligned at
    its best lag must match what the daemon captured: a dropped or repeated block inside
    an utterance shifts everything after it and breaks the correlation.
    Returns (latency per utterance in s, worst correlation)."""
    src_on = onsets(envelope(run.src))
    mic_on = onsets(envelope(run.mic))
    assert len(src_on) == len(TEXTS) and len(mic_on) == len(TEXTS), (src_on, mic_on)
    latency = (run.mic_t0 + mic_on) - (run.src_t0 + src_on)
    corrs = []
    ends = list(src_on[1:]) + [len(run.src) / RATE]
    for on, end, lat in zip(src_on, ends, latency):
        a0, a1 = int((on - 0.05) * RATE), int((end - 0.3) * RATE)
        a = run.src[a0:a1]
        b0 = a0 + int(round((run.src_t0 + lat - run.mic_t0) * RATE))
        lag = lag_by_xcorr(a, run.mic[b0:b0 + len(a)], int(0.03 * RATE))
        b = run.mic[b0 + lag:b0 + lag + len(a)]
        corrs.append(float(np.corrcoef(a[:len(b)], b)[0, 1]))
    print("per-utterance correlation", np.round(corrs, 3))
    return latency, min(corrs)


def test_live_daemon_sync_latency_and_fps(pulse_server, speech, mouth_crop, capsys):
    wav, audio = speech
    run = run_daemon(live_config(), wav, mouth_crop)
    latency, corr = check_audio_complete(run)
    offsets = av_offsets(run)
    xoff = av_offset_xcorr(run)
    dt = np.diff(run.frame_times)
    fps = (len(run.frame_times) - 1) / (run.frame_times[-1] - run.frame_times[0])
    with capsys.disabled():
        print(f"\nlive: latency per utterance {np.round(latency * 1e3, 1)} ms; A/V offset by onsets "
              f"{np.round(offsets * 1e3, 1)} ms, by cross-correlation {xoff * 1e3:.0f} ms; "
              f"fps {fps:.2f}; frame interval p99 {np.percentile(dt, 99) * 1e3:.1f} ms; "
              f"worst utterance mic/input correlation {corr:.3f}; daemon {run.status}")
    # audio complete: nothing lost, and the mic is the input, delayed
    assert corr > 0.9
    # lips and voice in sync within one frame
    assert abs(xoff) <= 1 / FPS
    # onsets are quantised by the 40 ms frames and depend on the phoneme: their median
    assert len(offsets) == len(TEXTS) and abs(np.median(offsets)) <= 1 / FPS, offsets
    # frames at the configured rate
    assert abs(fps - FPS) / FPS < 0.02
    assert run.status["frames_repeated"] <= 0.02 * len(run.frame_times)


class SlowEngine(ClassicEngine):
    """The classic engine with an artificial 60 ms per frame: slower than the 40 ms period."""

    def render(self, window, avatar):
        time.sleep(0.06)
        return super().render(window, avatar)


def test_slow_engine_repeats_frames_keeps_audio_and_sync(pulse_server, speech, mouth_crop, capsys):
    wav, audio = speech
    cfg = live_config()
    run = run_daemon(cfg, wav, mouth_crop, engine=SlowEngine(cfg))
    latency, corr = check_audio_complete(run)
    xoff = av_offset_xcorr(run)
    fps = (len(run.frame_times) - 1) / (run.frame_times[-1] - run.frame_times[0])
    with capsys.disabled():
        print(f"\nslow engine: latency {np.round(latency * 1e3, 1)} ms; A/V offset {xoff * 1e3:.0f} ms; "
              f"fps {fps:.2f}; repeated {run.status['frames_repeated']}, skipped {run.status['windows_skipped']}")
    assert corr > 0.9  # audio complete
    assert run.status["frames_repeated"] > 0.2 * len(run.frame_times)  # the camera repeats frames
    assert run.status["windows_skipped"] > 0
    assert abs(fps - FPS) / FPS < 0.02  # and still runs at its rate
    assert abs(xoff) <= 2 / FPS  # offset stays bounded
