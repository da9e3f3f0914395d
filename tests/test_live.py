"""The live daemon against a real PulseAudio server: espeak-ng speech with silence gaps is
played into vcam_in; the daemon captures vcam_in's monitor, publishes frames to a
recording pyvirtualcam backend and plays the delayed speech into vcam_mic, whose monitor
the test records. Only correctness is asserted; timings are printed (see bench_live.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conftest import DEFAULT_AVATAR, espeak_wav
from tests.pulse_env import both_servers
from tests.live_harness import (RATE, av_offset_xcorr, chunk_alignment, av_offsets, envelope, live_config,
                                mouth_box, onsets, run_daemon, speech_with_gaps)
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
    return mouth_box(ClassicEngine, DEFAULT_AVATAR)


def check_audio_complete(run):
    """Every utterance arrives in the mic, whole and in order: each loud 40 ms chunk of what
    the daemon captured is followed through the mic recording (chunk_alignment tolerates
    the playback's 1.5 % stretch, not a jump). A drop or repeat of 40-100 ms or more inside
    speech leaves chunks with no match (correlation under 0.5); a single 10 ms block on
    voiced speech can look like one pitch period, so the daemon's own count of samples
    lost before playing is checked as well.
    Returns (latency per utterance in s, median chunk correlation, worst chunk)."""
    src_on = onsets(envelope(run.src))
    mic_on = onsets(envelope(run.mic))
    assert len(src_on) == len(TEXTS) and len(mic_on) == len(TEXTS), (src_on, mic_on)
    latency = (run.mic_t0 + mic_on) - (run.src_t0 + src_on)
    lag0 = int(round((run.src_t0 + np.median(latency) - run.mic_t0) * RATE))
    idx, lags, corrs = chunk_alignment(run.src, run.mic, lag0)
    print(f"audio: {len(idx)} loud chunks, correlation median {np.median(corrs):.3f}, p1 "
          f"{np.percentile(corrs, 1):.3f}, min {corrs.min():.3f}; lag range "
          f"{(lags.max() - lags.min()) / RATE * 1e3:.1f} ms")
    for j in np.flatnonzero(corrs < 0.5):  # where to look if it fails
        print(f"  unmatched chunk at {idx[j] * 0.04:.2f} s of the input: lag {lags[j] / RATE * 1e3:.2f} ms, "
              f"correlation {corrs[j]:.3f}")
    assert len(idx) > 60
    assert run.status["playback"]["lost_samples"] == 0
    return latency, float(np.median(corrs)), float(corrs.min())


def steady_fps(run) -> float:
    """Frame rate while the speech plays (start-up, while the first delay estimate
    settles, is not what a meeting sees for long)."""
    t = run.frame_times[run.frame_times >= run.src_t0]
    return (len(t) - 1) / (t[-1] - t[0])


@both_servers
def test_live_daemon_sync_latency_and_fps(pulse_server, speech, mouth_crop, capsys):
    wav, audio = speech
    run = run_daemon(live_config(), wav, mouth_crop)
    latency, corr, low = check_audio_complete(run)
    offsets = av_offsets(run)
    xoff = av_offset_xcorr(run)
    dt = np.diff(run.frame_times)
    fps = steady_fps(run)
    with capsys.disabled():
        print(f"\nlive: latency per utterance {np.round(latency * 1e3, 1)} ms; A/V offset by onsets "
              f"{np.round(offsets * 1e3, 1)} ms, by cross-correlation {xoff * 1e3:.0f} ms; "
              f"fps {fps:.2f}; frame interval p99 {np.percentile(dt, 99) * 1e3:.1f} ms; "
              f"mic vs input: chunk correlation median {corr:.3f}, worst {low:.3f}; daemon {run.status}")
    # audio complete: nothing lost or repeated, and the mic is the input, delayed
    assert corr > 0.95 and low > 0.5
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
    latency, corr, low = check_audio_complete(run)
    xoff = av_offset_xcorr(run)
    fps = steady_fps(run)
    with capsys.disabled():
        print(f"\nslow engine: latency {np.round(latency * 1e3, 1)} ms; A/V offset {xoff * 1e3:.0f} ms; "
              f"fps {fps:.2f}; repeated {run.status['frames_repeated']}, skipped {run.status['windows_skipped']}")
    assert corr > 0.95 and low > 0.5  # audio complete
    assert run.status["frames_repeated"] > 0.2 * len(run.frame_times)  # the camera repeats frames
    assert run.status["windows_skipped"] > 0
    assert abs(fps - FPS) / FPS < 0.02  # and still runs at its rate
    assert abs(xoff) <= 2 / FPS  # offset stays bounded


def test_completeness_check_catches_a_drop_but_not_a_stretch(speech):
    """The audio check above must be able to fail: 100 ms of speech dropped inside any
    utterance fails it, while a delay (also by a fraction of a sample) and a 1.5 % resample either
    way (what the playback may do during speech) pass."""
    import soxr

    _, audio = speech
    lag = 2000
    pad = np.zeros(lag, np.float32)

    def verdict(mic):
        _, _, corrs = chunk_alignment(audio, mic, lag)
        return float(np.median(corrs)) > 0.95 and float(corrs.min()) > 0.5

    assert verdict(np.concatenate([pad, audio]))
    spec, freq = np.fft.rfft(audio), np.fft.rfftfreq(len(audio))  # half a sample later
    assert verdict(np.concatenate([pad, np.fft.irfft(spec * np.exp(-1j * np.pi * freq), len(audio))]))
    for on in (onsets(envelope(audio)) * RATE).astype(int):
        a, b = on + 4000, on + 12000
        for speed in (1.015, 1 / 1.015):
            stretched = soxr.resample(audio[a:b], RATE, RATE * speed)
            assert verdict(np.concatenate([pad, audio[:a], stretched, audio[b:]])), (on, speed)
        # 100 ms of speech (no 10 ms of it silent: a cut in a pause is what the playback
        # may do itself, and is no loss) dropped half a second or more into the utterance
        loud = np.abs(audio[: len(audio) // 160 * 160]).reshape(-1, 160).max(1) >= 10 ** (-45 / 20)
        sub = next(k for k in range((on + 8000) // 160, len(loud) - 10) if loud[k:k + 10].all())
        cut = sub * 160
        assert not verdict(np.concatenate([pad, audio[:cut], audio[cut + 1600:]])), on
