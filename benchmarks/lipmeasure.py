"""Viseme scores of rendered frames against phoneme times, measured with dlib.

Landmarks are re-detected on the output frames (never taken from our rig). Distances are
in inter-ocular distances (IOD, between the eye centres) of the same frame:
- gap: the mean of the three inner-lip pairs (61-67, 62-66, 63-65);
- width: mouth corner to corner (48-54).

Frame ``n`` is the picture for the audio instant ``n / fps``, on screen for half a period
either side of it (the pipeline's convention, which ``tests/test_sync.py`` pins), so it
*shows* a phone when that interval overlaps the phone's span.

Vowels are scored where they sound: espeak-ng ends a vowel at the next stop's burst, so a
vowel before p/b holds the stop's silent closure, where shut lips are right. Each vowel's
span ends where a closure (``speech.closure_spans``) begins inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks import speech

CLOSED_IOD = 0.03
CONTROL_SHIFT_S = 0.2


@dataclass
class Track:
    t: np.ndarray  # frame instants, s
    gap: np.ndarray  # IOD
    width: np.ndarray  # IOD
    fps: float


def measure(frames: np.ndarray, fps: float, redetect_every: int = 25) -> Track:
    """dlib landmarks on NxHxWx3 uint8 RGB frames; the face is re-found every ``redetect_every``."""
    import dlib

    from vcam_talker.avatar.landmarks import dlib_model_path

    det = dlib.get_frontal_face_detector()
    pred = dlib.shape_predictor(str(dlib_model_path()))
    gap, width, rect = [], [], None
    for i, f in enumerate(frames):
        if rect is None or i % redetect_every == 0:
            rects = det(f, 0) or det(f, 1)
            if rects:
                rect = max(rects, key=lambda r: r.area())
            elif rect is None:
                raise RuntimeError(f"dlib finds no face in output frame {i}")
        s = pred(f, rect)
        p = np.array([[s.part(k).x, s.part(k).y] for k in range(68)], np.float64)
        iod = np.linalg.norm(p[42:48].mean(0) - p[36:42].mean(0))
        gap.append(np.mean([p[66, 1] - p[62, 1], p[67, 1] - p[61, 1], p[65, 1] - p[63, 1]]) / iod)
        width.append(np.linalg.norm(p[54] - p[48]) / iod)
    return Track(np.arange(len(frames)) / fps, np.array(gap), np.array(width), fps)


def shifted(utt: speech.Utterance, dt: float) -> speech.Utterance:
    """The control: the same clip with its phoneme times moved by ``dt`` (the audio stays)."""
    ph = [speech.Phone(p.name, p.start + dt, p.end + dt, p.viseme) for p in utt.phones]
    return speech.Utterance(utt.audio, ph, utt.voice, utt.synth, utt.text, utt.rate_wpm)


def _showing(tr: Track, a: float, b: float) -> np.ndarray:
    half = 0.5 / tr.fps
    return np.nonzero((tr.t + half > a) & (tr.t - half < b))[0]


def _centred(tr: Track, a: float, b: float) -> np.ndarray:
    return np.nonzero((tr.t >= a) & (tr.t < b))[0]


def _vowel_gap(tr: Track, phones: list[speech.Phone], i: int, step: int) -> float | None:
    """Widest gap on the nearest vowel before (step -1) or after (+1) phone i, within 0.5 s."""
    j = i + step
    while 0 <= j < len(phones) and abs(phones[j].start - phones[i].start) < 0.5:
        p = phones[j]
        if p.viseme == "rest":
            return None
        if p.viseme in speech.VOWELS:
            idx = _showing(tr, p.start, p.end)
            return float(tr.gap[idx].max()) if len(idx) else None
        j += step
    return None


def sounded(utt: speech.Utterance, spans: list[tuple[float, float]]) -> list[speech.Phone]:
    """The phones with each one's end moved back to a closure that starts inside it."""
    out = []
    for p in utt.phones:
        end = min([p.end] + [a for a, _ in spans if p.start < a < p.end])
        out.append(speech.Phone(p.name, p.start, end, p.viseme))
    return out


def score(tr: Track, utt: speech.Utterance) -> dict:
    """Closure recall and onset error, false closures on open vowels, rounded-vs-spread width,
    and stillness in pauses."""
    spans = speech.closure_spans(utt)
    phones = sounded(utt, spans)
    closed_idx = [i for i, p in enumerate(phones) if p.viseme == "closed"]
    hits, onsets = 0, []
    for i, (a, b) in zip(closed_idx, spans):
        refs = [g for g in (_vowel_gap(tr, phones, i, -1), _vowel_gap(tr, phones, i, 1)) if g is not None]
        limit = min(CLOSED_IOD, np.mean(refs) / 3) if refs else CLOSED_IOD
        idx = _showing(tr, a, b)
        shut = idx[tr.gap[idx] <= limit]
        if len(shut):
            hits += 1
            k = int(shut[0])  # back to where this closure began
            while k > 0 and tr.gap[k - 1] <= limit and tr.t[k - 1] > a - 0.2:
                k -= 1
            onsets.append(tr.t[k] - a)
    open_frames = np.concatenate([_centred(tr, p.start + 0.01, p.end - 0.01) for p in phones
                                  if p.viseme == "open" and p.end - p.start >= 0.05] or [np.zeros(0, int)])
    false = float(np.mean(tr.gap[open_frames] < CLOSED_IOD)) if len(open_frames) else float("nan")

    def mean_width(kind):
        idx = np.concatenate([_centred(tr, p.start, p.end) for p in phones
                              if p.viseme == kind and p.name not in ("w", "j")] or [np.zeros(0, int)])
        return float(tr.width[idx].mean()) if len(idx) else float("nan"), len(idx)

    w_round, n_round = mean_width("rounded")
    w_spread, n_spread = mean_width("spread")
    pauses = np.concatenate([_centred(tr, p.start + 0.15, p.end - 0.1) for p in phones
                             if p.viseme == "rest" and p.end - p.start >= 0.4] or [np.zeros(0, int)])
    return {
        "bilabials": len(spans),
        "closure_recall": hits / len(spans) if spans else float("nan"),
        "onset_error_ms": float(np.mean(onsets) * 1000) if onsets else float("nan"),
        "onset_abs_error_ms": float(np.mean(np.abs(onsets)) * 1000) if onsets else float("nan"),
        "open_vowel_frames": int(len(open_frames)),
        "false_closure_rate": false,
        "width_rounded_iod": w_round,
        "width_spread_iod": w_spread,
        "spread_minus_rounded_iod": w_spread - w_round,
        "rounded_frames": n_round,
        "spread_frames": n_spread,
        "pause_frames": int(len(pauses)),
        "pause_gap_std_iod": float(tr.gap[pauses].std()) if len(pauses) else float("nan"),
        "pause_gap_max_iod": float(tr.gap[pauses].max()) if len(pauses) else float("nan"),
    }
