"""Sub-frame A/V sync of any output, measured independently of our code: dlib re-detects
the lips on the output frames, and their gap, held on screen from each frame's display
time to the next, is cross-correlated with the audio's loudness on a 1 ms grid.

Positive offset: the mouth moves after the voice. An mp4 is read the way a player reads
it: frame and audio times are the container's timestamps, as ffprobe reports them (edit
lists applied), never assumed from frame counts.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.lipsync import inner_lip_gap

HOP_S = 0.001
MAX_LAG_S = 0.3


def _probe(path: Path, *args: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", *args, "-of", "json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def read_mp4(path: Path, crop: tuple[int, int, int, int], rate: int = 16000):
    """(frame times s, frames cropped to (x0, y0, x1, y1), audio mono at ``rate``, the
    time of the audio's first sample), all on the container's clock."""
    x0, y0, x1, y1 = crop
    w, h = x1 - x0, y1 - y0
    times = np.array([float(f["best_effort_timestamp_time"]) for f in _probe(
        path, "-select_streams", "v:0", "-show_entries", "frame=best_effort_timestamp_time")["frames"]])
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
                          "-vf", f"crop={w}:{h}:{x0}:{y0}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
    assert len(frames) == len(times), (len(frames), len(times))
    a0 = float(_probe(path, "-select_streams", "a:0", "-show_entries", "stream=start_time")["streams"][0]["start_time"])
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", str(rate),
                          "-f", "f32le", "-"], check=True, capture_output=True).stdout
    return times, frames, np.frombuffer(pcm, np.float32), a0


def loudness(audio: np.ndarray, rate: int, t: np.ndarray, win_s: float = 0.02) -> np.ndarray:
    """RMS over ``win_s`` centred on each time ``t`` (s from the first sample)."""
    c = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    half = int(win_s * rate / 2)
    mid = np.round(t * rate).astype(int)
    lo, hi = np.clip(mid - half, 0, len(audio)), np.clip(mid + half, 0, len(audio))
    return np.sqrt((c[hi] - c[lo]) / np.maximum(hi - lo, 1))


def offset(frame_times: np.ndarray, gap: np.ndarray, audio: np.ndarray, rate: int, audio_t0: float,
           span: tuple[float, float] | None = None, max_lag_s: float = MAX_LAG_S) -> tuple[float, float]:
    """(lag s, correlation) maximising corr(mouth(t), loudness(t - lag)); both signals on
    one clock: frame i is on screen from frame_times[i] to frame_times[i + 1]."""
    t0 = max(frame_times[0], audio_t0)
    t1 = min(frame_times[-1], audio_t0 + len(audio) / rate)
    if span is not None:
        t0, t1 = max(t0, span[0]), min(t1, span[1])
    lag_n = int(round(max_lag_s / HOP_S))
    grid = np.arange(t0, t1, HOP_S)
    held = gap[np.clip(np.searchsorted(frame_times, grid, side="right") - 1, 0, len(gap) - 1)]
    # loudness over the grid widened by the largest lag, so every lag compares equal lengths
    wide = np.arange(t0 - lag_n * HOP_S, t0 + (len(grid) + lag_n) * HOP_S - HOP_S / 2, HOP_S)[:len(grid) + 2 * lag_n]
    loud = loudness(audio, rate, wide - audio_t0)
    m = (held - held.mean()) / (held.std() + 1e-12)
    best = (-2.0, 0)
    for k in range(-lag_n, lag_n + 1):  # loudness at t - lag: index shifted by -k
        seg = loud[lag_n - k:lag_n - k + len(grid)]
        c = float(np.dot(m, (seg - seg.mean()) / (seg.std() + 1e-12)) / len(grid))
        best = max(best, (c, k))
    return best[1] * HOP_S, best[0]


def mp4_offset(path: Path, crop: tuple[int, int, int, int], span: tuple[float, float] | None = None,
               audio_shift_s: float = 0.0) -> tuple[float, float]:
    """Lip-sync offset of an mp4 (or .ts, .flv) (s, positive: mouth after voice) and its correlation.
    ``audio_shift_s``: the control; remuxes the file with its audio that much later
    (ffmpeg -itsoffset, streams copied) before measuring."""
    if audio_shift_s:
        shifted = Path(path).with_name(Path(path).stem + f"_shift{int(audio_shift_s * 1000)}" + Path(path).suffix)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-itsoffset", str(audio_shift_s),
                        "-i", str(path), "-map", "0:v:0", "-map", "1:a:0", "-c", "copy", str(shifted)], check=True)
        path = shifted
    times, frames, audio, a0 = read_mp4(path, crop)
    return offset(times, inner_lip_gap(frames), audio, 16000, a0, span)


def face_crop(landmarks: np.ndarray, size: tuple[int, int], margin: int = 40) -> tuple[int, int, int, int]:
    """An even-sized box around the 68 landmarks, for dlib to find the face again."""
    x0, y0 = np.maximum(landmarks.min(0) - margin, 0).astype(int) // 2 * 2
    x1, y1 = np.minimum(landmarks.max(0) + margin, size).astype(int) // 2 * 2
    return int(x0), int(y0), int(x1), int(y1)


def espeak_voice(path: Path, text: str, voice: str, rate: int = 16000, speed: int = 150) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``voice`` (e.g. en-us, en-us+f3, de), mono at ``rate``;
    also written to ``path`` as 16-bit WAV."""
    import soxr

    raw = Path(path).with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
    x, sr = sf.read(raw, dtype="float32")
    raw.unlink()
    x = soxr.resample(x, sr, rate, quality="HQ").astype(np.float32) if sr != rate else x
    sf.write(path, x, rate, subtype="PCM_16")
    return x


def first_onset(audio: np.ndarray, rate: int, ratio: float = 0.1, hop_s: float = 0.005) -> float:
    """Seconds from the start to where the 5 ms RMS first exceeds ``ratio`` of its peak."""
    hop = int(rate * hop_s)
    n = len(audio) // hop
    env = np.sqrt((audio[: n * hop].reshape(n, hop) ** 2).mean(1))
    return float(np.argmax(env > ratio * env.max()) * hop_s)
