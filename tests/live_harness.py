"""Runs the real daemon against the private PulseAudio server and measures what a meeting
would receive: the camera frames (through a recording pyvirtualcam backend) and the
delayed mic (recorded from vcam_mic's monitor). Shared by tests/test_live.py and
benchmarks/bench_live.py."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.recording_cam import BACKEND, RecordingCamera, register
from vcam_talker.audio.capture import AudioCapture
from vcam_talker.audio.ring import AudioRing
from vcam_talker.config import Config, from_dict, to_dict
from vcam_talker.daemon import Daemon

RATE = 16000


def live_config(**over) -> Config:
    d = to_dict(Config())
    d["audio"].update(input="vcam_in_monitor", output="vcam_mic_sink")
    d["sinks"]["virtualcam"].update(backend=BACKEND, device="")
    d["sinks"]["fallback_record"] = ""
    d["engine"]["classic"]["sway"] = 0.0  # mouth pixels then move only with the mouth
    d["status"]["interval_s"] = 2.0
    for section, values in over.items():
        d[section].update(values)
    return from_dict(d)


def mouth_box(engine_cls, avatar: Path) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) around the avatar's mouth landmarks in the live frame, 10 px wider."""
    av = engine_cls(live_config()).prepare(avatar)
    (x0, y0), (x1, y1) = av.landmarks[48:68].min(0) - 10, av.landmarks[48:68].max(0) + 10
    return int(y0), int(y1), int(x0), int(x1)


def record_mic_while_playing(wav: Path, env: dict, device: str = "vcam_mic_monitor") -> np.ndarray:
    """Plays ``wav`` into vcam_in with paplay and returns what ``device`` captured meanwhile
    (16 kHz float32), 0.3 s before and 1 s after included."""
    ring = AudioRing(RATE, 30.0)
    with AudioCapture(device, ring):
        time.sleep(0.3)
        subprocess.run(["paplay", "--device=vcam_in", str(wav)], env=env, check=True, timeout=30)
        time.sleep(1.0)
        return ring.read(ring.start, ring.end - ring.start)


def speech_with_gaps(espeak_wav, tmp: Path, texts: list[str], gap_s: float = 1.2) -> tuple[Path, np.ndarray]:
    parts = [np.zeros(int(0.5 * RATE), np.float32)]
    for i, text in enumerate(texts):
        x, _ = sf.read(espeak_wav(tmp / f"u{i}.wav", text), dtype="float32")
        parts += [x, np.zeros(int(gap_s * RATE), np.float32)]
    audio = np.concatenate(parts)
    path = tmp / "speech_gaps.wav"
    sf.write(path, audio, RATE, subtype="PCM_16")
    return path, audio


@dataclass
class LiveRun:
    frame_times: np.ndarray
    frames: np.ndarray  # mouth crops
    mic: np.ndarray  # vcam_mic monitor at RATE
    mic_t0: float  # monotonic time of mic[0]
    src: np.ndarray  # vcam_in monitor at RATE (what the daemon heard)
    src_t0: float
    status: dict
    status_lines: list[str] = field(default_factory=list)


def _capture_timeline(ring: AudioRing, start: int) -> tuple[np.ndarray, float]:
    end = ring.end
    return ring.read(start, end - start), ring.time_of(start)


def run_daemon(cfg: Config, wav: Path, crop: tuple[int, int, int, int], *, tail_s: float = 1.5,
               engine=None, env: dict | None = None) -> LiveRun:
    register()
    RecordingCamera.crop = crop
    mic_ring, src_ring = AudioRing(RATE, 120.0), AudioRing(RATE, 120.0)
    mic_rec = AudioCapture("vcam_mic_monitor", mic_ring).start()
    src_rec = AudioCapture("vcam_in_monitor", src_ring).start()
    daemon = Daemon(cfg, engine=engine)
    daemon.start()
    try:
        assert daemon.first_frame.wait(10), "no frame published"
        # the delay estimate settles on its first second of measurements, then the mic
        # glides to it during silence; a real user would not notice that first second.
        # The daemon measures afresh INPUT_SETTLE_S after the input opened (in the audio
        # helper, a few hundred ms after start): the speech starts after that, or the
        # change would land in its first utterance.
        from vcam_talker.daemon import INPUT_SETTLE_S

        deadline, last = time.monotonic() + 12.0, None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            st = daemon.status()
            steady = last is not None and st["delay_ms"] == last
            last = st["delay_ms"]
            opened = getattr(daemon.audio, "input_opened_at", None)
            remeasured = opened is not None and time.monotonic() - opened > INPUT_SETTLE_S + 1.0 \
                and st["delay_measured"]
            if time.monotonic() - daemon.started_at > 2.0 and steady and remeasured \
                    and abs(st.get("av_offset_ms", 0.0)) < 3.0:
                break
        mic_start, src_start = mic_ring.end, src_ring.end
        subprocess.run(["paplay", "--device=vcam_in", str(wav)], check=True, env=env or dict(os.environ),
                       timeout=120)
        time.sleep(tail_s)
        status = daemon.status()
    finally:
        daemon.stop()
        mic_rec.stop()
        src_rec.stop()
    cam = RecordingCamera.instances[-1]
    times, frames = cam.snapshot()
    mic, mic_t0 = _capture_timeline(mic_ring, mic_start)
    src, src_t0 = _capture_timeline(src_ring, src_start)
    return LiveRun(times, frames, mic, mic_t0, src, src_t0, status)


# ---- analysis -------------------------------------------------------------------------
def envelope(x: np.ndarray, rate: int = RATE, hop_s: float = 0.005) -> np.ndarray:
    hop = int(rate * hop_s)
    n = len(x) // hop
    return np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(1))


def onsets(env: np.ndarray, hop_s: float = 0.005, thresh_ratio: float = 0.1, min_gap_s: float = 0.6) -> np.ndarray:
    """Times (s from the signal start) where sound begins after at least min_gap_s of quiet."""
    loud = env > thresh_ratio * env.max()
    out, quiet = [], int(min_gap_s / hop_s)
    last_loud = -quiet - 1
    for i, v in enumerate(loud):
        if v:
            if i - last_loud > quiet:
                out.append(i * hop_s)
            last_loud = i
    return np.array(out)


def lag_by_xcorr(a: np.ndarray, b: np.ndarray, max_lag: int) -> int:
    """The shift (samples) of b that best matches a: b[i] ~ a[i - lag] (b later: lag > 0)."""
    a = (a - a.mean()) / (a.std() + 1e-12)
    b = (b - b.mean()) / (b.std() + 1e-12)
    best, best_lag = -np.inf, 0
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            x, y = a[: len(a) - lag], b[lag:]
        else:
            x, y = a[-lag:], b[: len(b) + lag]
        n = min(len(x), len(y))
        c = float(np.dot(x[:n], y[:n]) / max(n, 1))
        if c > best:
            best, best_lag = c, lag
    return best_lag


def mouth_signal(run: LiveRun) -> np.ndarray:
    """Per recorded frame: mean absolute difference of the mouth crop from the closed mouth
    (the median frame of the quietest tenth)."""
    f = run.frames.astype(np.float32)
    energy = np.abs(f - np.median(f, axis=0)).mean(axis=(1, 2, 3))
    closed = f[energy <= np.percentile(energy, 10)].mean(axis=0)
    return np.abs(f - closed).mean(axis=(1, 2, 3))


def av_offsets(run: LiveRun, hop_s: float = 0.005) -> np.ndarray:
    """Per utterance: mouth-opening onset (frame send time) minus the onset of the same
    utterance in the delayed mic, in seconds (positive: the picture is late)."""
    mic_env = envelope(run.mic)
    mic_on = run.mic_t0 + onsets(mic_env, hop_s)
    m = mouth_signal(run)
    out = []
    for t in mic_on:
        # this utterance's frames; the mouth counts as opening at 20% of its own peak
        span = (run.frame_times > t - 0.3) & (run.frame_times < t + 0.8)
        if not span.any():
            continue
        opened = span & (m > 0.2 * m[span].max())
        first = np.flatnonzero(opened)
        if len(first):
            out.append(run.frame_times[first[0]] - t)
    return np.array(out)


def _quarter_shifts(x: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """``x`` read a quarter, half and three quarters of a sample later (band-limited, by
    FFT), beside itself: [(shift, x(t + shift))]."""
    spec = np.fft.rfft(x)
    freq = np.fft.rfftfreq(len(x))
    return [(0.0, x)] + [(q, np.fft.irfft(spec * np.exp(2j * np.pi * freq * q), len(x)).astype(x.dtype))
                         for q in (0.25, 0.5, 0.75)]


def chunk_alignment(src: np.ndarray, mic: np.ndarray, lag0: int, rate: int = RATE, chunk_s: float = 0.04,
                    search_s: float = 0.03, track_s: float = 0.002, pause_search_s: float = 0.3,
                    loud_ratio: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Follows ``src`` through ``mic`` (src delayed by about ``lag0`` samples, possibly
    resampled by a few percent), one loud chunk at a time.

    A chunk that directly follows a loud chunk with no silence between them (no 10 ms
    below the playback's splice level, -45 dBFS peak) is searched only within ``track_s``
    of its neighbour's lag, as a stretch of at most 1.5 % moves it 0.6 ms per 40 ms; so
    the lag cannot jump a pitch period on voiced sound, and a block dropped or repeated
    inside speech leaves the chunks after it without a match. Any other chunk is searched
    within ``search_s``: silence may legitimately be spliced in or out there; one after a
    pause of 120 ms or more within ``pause_search_s``, as the delay itself moves in pauses
    (the playback changes it only with 60 ms of silence ahead and 30 ms margins either side,
    see DelayedPlayback.in_pause).

    The playback's resampler delays by fractions of a sample, and on a fricative (mostly
    energy at 4-8 kHz) half a sample alone takes an exact copy's correlation at whole-sample
    lags down to 0.7 here, so lags are searched in quarter samples.

    Returns (index of each loud chunk, its lag in samples, the normalised correlation).
    """
    n = int(chunk_s * rate)
    k = len(src) // n
    rms = np.sqrt((src[: k * n].reshape(k, n) ** 2).mean(1))
    loud = np.flatnonzero(rms > loud_ratio * rms.max())
    sub = int(0.01 * rate)
    peaks = np.abs(src[: len(src) // sub * sub]).reshape(-1, sub).max(1)
    silent_sub = peaks < 10 ** (-45 / 20)
    pause_subs = 12
    shifted = _quarter_shifts(mic)
    idx, lags, corrs = [], [], []
    prev_i, prev_lag = -2, lag0
    for i in loud:
        a = src[i * n:(i + 1) * n]
        joined = i == prev_i + 1 and not silent_sub[(i - 1) * n // sub:(i + 1) * n // sub].any()
        # after a real pause (120 ms of silence) the playback may have changed the delay by
        # any amount, spliced in that silence; within words only by a stretch or a drop
        q0 = i * n // sub
        paused = _longest_run(silent_sub[max(0, q0 - 2 * pause_subs):q0 + 1]) >= pause_subs  # onsets straddle subs
        w = int((track_s if joined else pause_search_s if paused else search_s) * rate)
        b0 = i * n + prev_lag - w
        if b0 < 0 or b0 + n + 2 * w > len(mic):
            continue
        best = (-np.inf, 0, 0.0)
        for q, m in shifted:
            b = m[b0:b0 + n + 2 * w]
            c = np.correlate(b, a, mode="valid")  # 2w+1 candidate lags
            c = c / (np.sqrt(np.convolve(b ** 2, np.ones(n), mode="valid")) * np.sqrt((a ** 2).sum()) + 1e-12)
            j = int(np.argmax(c))
            best = max(best, (float(c[j]), j, q))
        corr, j, q = best
        lag = prev_lag - w + j
        idx.append(i)
        lags.append(lag + q)
        corrs.append(corr)
        prev_i, prev_lag = i, lag
    return np.array(idx), np.array(lags), np.array(corrs)


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def utterance_spans(run: LiveRun, before_s: float = 0.3) -> list[tuple[float, float]]:
    """(start, end) monotonic times of each utterance in the delayed mic, from just before
    its onset to just before the next one."""
    on = run.mic_t0 + onsets(envelope(run.mic))
    ends = list(on[1:] - before_s) + [run.mic_t0 + len(run.mic) / RATE]
    return [(t - before_s, e) for t, e in zip(on, ends)]


def av_offset_xcorr(run: LiveRun, hop_s: float = 0.005, max_lag_s: float = 0.3,
                    span: tuple[float, float] | None = None) -> float:
    """Offset (s) of the mouth-opening signal against the delayed mic's loudness, by
    cross-correlation on a common clock (positive: the picture is late). Each frame is held
    from its send time to the next, as a camera reader would see it. ``span``: only this
    (monotonic) time range, e.g. one utterance."""
    m = mouth_signal(run)
    t0 = max(run.frame_times[0], run.mic_t0)
    t1 = min(run.frame_times[-1], run.mic_t0 + len(run.mic) / RATE)
    if span is not None:
        t0, t1 = max(t0, span[0]), min(t1, span[1])
    grid = np.arange(t0, t1, hop_s)
    idx = np.searchsorted(run.frame_times, grid, side="right") - 1
    mouth = m[np.clip(idx, 0, len(m) - 1)]
    # loudness over one frame period around each instant, like the offline lip-sync test
    env = envelope(run.mic, RATE, hop_s) ** 2
    k = max(1, int(0.04 / hop_s))
    loud = np.sqrt(np.convolve(env, np.ones(k) / k, mode="same"))
    at = ((grid - run.mic_t0) / hop_s).astype(int)
    loud = loud[np.clip(at, 0, len(loud) - 1)]
    return lag_by_xcorr(loud, mouth, int(max_lag_s / hop_s)) * hop_s


# ---- shared by the benchmarks (bench_live --load, soak_workday) --------------------------
def pair_onsets(src_on: np.ndarray, mic_on: np.ndarray, max_s: float = 6.0) -> np.ndarray:
    """Latency (s) per input onset: the mic onset nearest to the previous latency (the
    first: the earliest one after it), so that a missed or extra onset does not shift all
    the pairs after it; NaN where no mic onset lies within ``max_s`` after it."""
    out, prev = [], None
    for s in src_on:
        cand = mic_on[(mic_on > s - 0.05) & (mic_on < s + max_s)] - s
        if len(cand) == 0:
            out.append(np.nan)
            continue
        lat = cand[0] if prev is None else cand[np.argmin(np.abs(cand - prev))]
        out.append(lat)
        prev = lat
    return np.array(out)


def per_utterance_lost(run: LiveRun, src_on: np.ndarray, latency: np.ndarray, min_corr: float = 0.5,
                       chunk_s: float = 0.04) -> tuple[int, int]:
    """(loud chunks, chunks not found) with each utterance anchored at its own onset
    latency: a jump of the delay in the silence before it moves the utterance but loses
    nothing, so this counts only what is gone or garbled inside speech."""
    n, pad = int(chunk_s * RATE), int(0.2 * RATE)
    starts = ((src_on - run.src_t0) * RATE).astype(int) - int(0.1 * RATE)
    ends = list(starts[1:]) + [len(run.src)]
    loud_all, lost = 0, 0
    for a, b, lat in zip(starts, ends, latency):
        a = max(0, a) // n * n
        if not np.isfinite(lat) or b - a < n:
            continue
        m0 = a + int(round((run.src_t0 + lat - run.mic_t0) * RATE)) - pad
        if m0 < 0:
            continue
        seg = run.src[a:b]
        k = len(seg) // n
        rms = np.sqrt((seg[: k * n].reshape(k, n) ** 2).mean(1))
        loud = int((rms > 0.1 * rms.max()).sum())  # chunk_alignment's selection
        idx, _, corrs = chunk_alignment(seg, run.mic[m0:m0 + (b - a) + 2 * pad + RATE], pad)
        loud_all += loud
        lost += int((corrs < min_corr).sum()) + max(0, loud - len(idx))
    return loud_all, lost


def audio_match(run: LiveRun, min_corr: float = 0.5, chunk_s: float = 0.04) -> dict:
    """What of the input came out of the delayed mic: loud 40 ms chunks of ``run.src``
    followed through ``run.mic`` by :func:`chunk_alignment` (test_live's check).
    ``unmatched``: chunks not found at a steady lag over the whole run (correlation under
    ``min_corr``: lost, repeated, garbled, or moved by a jump of the delay); ``lost``: not
    found with each utterance anchored at its own latency (:func:`per_utterance_lost`);
    ``missing``: loud chunks the mic recording did not reach. Latency per input utterance
    in s."""
    src_on = run.src_t0 + onsets(envelope(run.src))
    mic_on = run.mic_t0 + onsets(envelope(run.mic))
    latency = pair_onsets(src_on, mic_on)
    out = {"utterances_in": len(src_on), "utterances_out": len(mic_on), "latency_s": latency.tolist(),
           "chunks": 0, "loud_chunks": 0, "unmatched": 0, "lost": 0, "missing": 0, "corr_median": float("nan"),
           "corr_min": float("nan"), "unmatched_at_s": []}
    if not np.isfinite(latency).any():
        return out
    lag0 = int(round((run.src_t0 + np.nanmedian(latency[:3]) - run.mic_t0) * RATE))  # before any jump
    idx, lags, corrs = chunk_alignment(run.src, run.mic, lag0)
    k = int(chunk_s * RATE)
    rms = np.sqrt((run.src[: len(run.src) // k * k].reshape(-1, k) ** 2).mean(1))
    loud = int((rms > 0.1 * rms.max()).sum())  # the same selection as chunk_alignment's
    bad = corrs < min_corr
    _, lost = per_utterance_lost(run, src_on, latency, min_corr, chunk_s)
    out.update(chunks=len(idx), loud_chunks=loud, unmatched=int(bad.sum()), lost=lost,
               missing=loud - len(idx), unmatched_at_s=(idx[bad] * chunk_s).round(2).tolist())
    if len(idx):
        out.update(corr_median=float(np.median(corrs)), corr_min=float(corrs.min()))
    return out


def frame_timing(times: np.ndarray) -> dict:
    """fps and frame gaps (ms) of camera send times."""
    dt = np.diff(times) * 1e3
    if len(dt) == 0:
        return {"frames": len(times), "fps": float("nan"), "gap_p50_ms": float("nan"),
                "gap_p99_ms": float("nan"), "gap_max_ms": float("nan")}
    return {"frames": len(times), "fps": float(len(dt) / (times[-1] - times[0])),
            "gap_p50_ms": float(np.percentile(dt, 50)), "gap_p99_ms": float(np.percentile(dt, 99)),
            "gap_max_ms": float(dt.max())}


def av_sync(run: LiveRun, max_lag_s: float = 0.3) -> dict:
    """A/V offset (ms, positive: the picture is late): by cross-correlation over the whole
    run and per utterance (median and worst), and by onsets (median). ``at_limit``:
    utterances whose best lag is the search limit, i.e. no match (e.g. garbled audio or a
    frozen picture)."""
    per_utt = np.array([av_offset_xcorr(run, span=sp) for sp in utterance_spans(run)]) * 1e3
    ons = av_offsets(run) * 1e3
    nan = float("nan")
    return {"xcorr_ms": av_offset_xcorr(run) * 1e3, "per_utterance_ms": per_utt.tolist(),
            "at_limit": int((np.abs(per_utt) >= max_lag_s * 1e3 - 1e-6).sum()),
            "median_ms": float(np.median(per_utt)) if len(per_utt) else nan,
            "worst_ms": float(per_utt[np.argmax(np.abs(per_utt))]) if len(per_utt) else nan,
            "onsets_median_ms": float(np.median(ons)) if len(ons) else nan}


def counter_deltas(before: dict, after: dict) -> dict:
    """Growth of the daemon's audio and frame counters between two /status answers. A
    counter that went down was reset (a new playback stream): its new value counts."""
    def get(s: dict, key: str) -> int:
        return int(s.get("playback", {}).get(key, 0)) if key in ("underflows", "lost_samples", "resyncs") \
            else int(s.get(key, 0))
    out = {}
    for key in ("underflows", "lost_samples", "resyncs", "frames_emitted", "frames_repeated", "windows_skipped"):
        a, b = get(before, key), get(after, key)
        out[key] = b - a if b >= a else b
    return out
