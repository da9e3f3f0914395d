"""Independent lip-sync measurement: dlib landmarks on decoded output frames vs the audio's RMS."""

from __future__ import annotations

import subprocess

import numpy as np

from vcam_talker.avatar.landmarks import dlib_model_path


def decode_frames(mp4, width: int, height: int) -> np.ndarray:
    """All video frames of ``mp4`` as NxHxWx3 uint8 RGB, decoded by ffmpeg."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(mp4), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def inner_lip_gap(frames: np.ndarray) -> np.ndarray:
    """Per frame: mean vertical distance of the three inner-lip pairs (61-67, 62-66, 63-65),
    divided by the face height, from landmarks re-detected with dlib."""
    import dlib

    det = dlib.get_frontal_face_detector()
    pred = dlib.shape_predictor(str(dlib_model_path()))
    rects = det(frames[0], 1)
    assert rects, "dlib finds no face in the first output frame"
    rect = max(rects, key=lambda r: r.area())
    out = []
    for f in frames:
        s = pred(f, rect)
        p = np.array([[s.part(i).x, s.part(i).y] for i in range(68)], np.float64)
        face_h = np.linalg.norm(p[8] - p[27])
        out.append(np.mean([p[66, 1] - p[62, 1], p[67, 1] - p[61, 1], p[65, 1] - p[63, 1]]) / face_h)
    return np.array(out)


def rms_per_frame(audio: np.ndarray, rate: int, fps: int, n: int) -> np.ndarray:
    """RMS of one frame period of audio centred on each frame time."""
    half = rate // fps // 2
    centers = (np.arange(n) * rate / fps).round().astype(int)
    return np.array([np.sqrt(np.mean(audio[max(c - half, 0):c + half] ** 2) if c < len(audio) else 0.0)
                     for c in centers])


def xcorr(a: np.ndarray, b: np.ndarray, max_lag: int) -> dict[int, float]:
    """Pearson correlation of a[i] with b[i - lag] for each lag (positive lag: a trails b)."""
    out = {}
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            x, y = a[lag:], b[:len(b) - lag]
        else:
            x, y = a[:lag], b[-lag:]
        out[lag] = float(np.corrcoef(x, y)[0, 1])
    return out
