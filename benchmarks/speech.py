"""Phoneme-timed speech for the viseme benchmark, its test and the classifier's training data.

Two synthesizers give each phoneme's position in the audio:
- espeak-ng through its library (``ctypes`` on ``libespeak-ng.so.1``): synchronous output
  with phoneme events, ``audio_position`` in ms and the phoneme's mnemonic;
- Festival (``festival -b``), whose utterance segments carry their end times.

Everything comes back at 16 kHz mono float32, with :class:`Phone` spans in seconds and each
phone's viseme class (the names of ``vcam_talker.engines.classic.visemes.VISEMES``).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RATE = 16000


@dataclass
class Phone:
    name: str
    start: float
    end: float
    viseme: str


@dataclass
class Utterance:
    audio: np.ndarray  # float32 mono at RATE
    phones: list[Phone]
    voice: str
    synth: str
    text: str = ""
    rate_wpm: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return len(self.audio) / RATE


# --- phoneme names -> viseme class -----------------------------------------------------
# espeak-ng mnemonics (Kirshenbaum-like, per language) and Festival's radio/mrpa sets.
# Diphthongs take their first element: that is the shape the lips make first.
_ESPEAK = [
    (r"^_", "rest"),
    (r"^[pbm]", "closed"),
    (r"^(f|v|F|pf)", "labiodental"),
    (r"^(u|U|o|O|w|y|Y|2|9|0|W)", "rounded"),
    (r"^(i|I|e|E|j)", "spread"),
    (r"^(a|A|&|V|aI|aU)", "open"),
]
_FESTIVAL = {
    "pau": "rest", "h#": "rest", "#": "rest", "sil": "rest",
    "p": "closed", "b": "closed", "m": "closed", "em": "closed",
    "f": "labiodental", "v": "labiodental",
    "uw": "rounded", "uh": "rounded", "ow": "rounded", "oy": "rounded", "ao": "rounded", "w": "rounded",
    "u": "rounded", "o": "rounded", "oo": "rounded", "uu": "rounded", "ou": "rounded", "oi": "rounded",
    "iy": "spread", "ih": "spread", "ey": "spread", "eh": "spread", "y": "spread",
    "i": "spread", "ii": "spread", "e": "spread", "ei": "spread",
    "ax": "neutral", "er": "neutral", "axr": "neutral", "@": "neutral", "schwa": "neutral",
    "aa": "open", "ae": "open", "ay": "open", "aw": "open", "ah": "open",
    "a": "open", "aa1": "open", "ai": "open", "au": "open", "uh1": "open",
}
VOWELS = ("rounded", "spread", "open")


def viseme_of(name: str, synth: str) -> str:
    if synth == "festival":  # radio names, else SAMPA-like names with stress digits
        name = re.sub(r"\d", "", name)
        if name.lower() in _FESTIVAL:
            return _FESTIVAL[name.lower()]
    for pat, v in _ESPEAK:
        if re.match(pat, name):
            return v
    return "neutral"


# --- espeak-ng ------------------------------------------------------------------------
class _Id(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
EVENT_PHONEME = 7
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4


class _Espeak:
    """The library is process-global: one instance, one synthesis at a time."""

    def __init__(self):
        self.lib = ctypes.CDLL("libespeak-ng.so.1")
        self.rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, INITIALIZE_PHONEME_EVENTS)
        if self.rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._cb = _CALLBACK(self._collect)  # kept referenced: the library calls it later
        self.lib.espeak_SetSynthCallback(self._cb)

    def _collect(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != 0:
            e = events[i]
            if e.type == EVENT_PHONEME:
                self._events.append((e.audio_position, e.id.string.decode("ascii", "replace")))
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate_wpm: int, pitch: int | None, range_: int | None):
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self.lib.espeak_SetParameter(PARAM_RATE, int(rate_wpm), 0)
            if pitch is not None:
                self.lib.espeak_SetParameter(PARAM_PITCH, int(pitch), 0)
            if range_ is not None:
                self.lib.espeak_SetParameter(PARAM_RANGE, int(range_), 0)
            self._chunks, self._events = [], []
            b = text.encode()
            self.lib.espeak_Synth(b, len(b) + 1, 0, 0, 0, 0, None, None)
            self.lib.espeak_Synchronize()
            pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return pcm.astype(np.float32) / 32768.0, list(self._events)


_espeak: _Espeak | None = None


def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    import soxr

    return x if sr == RATE else soxr.resample(x, sr, RATE, quality="HQ").astype(np.float32)


def _phones(events: list[tuple[float, str]], end: float, synth: str) -> list[Phone]:
    """Spans from onsets: each phone lasts until the next one starts."""
    out = []
    for i, (t, name) in enumerate(events):
        t1 = events[i + 1][0] if i + 1 < len(events) else end
        if t1 > t:
            out.append(Phone(name, t, t1, viseme_of(name, synth)))
    return out


def espeak(text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int | None = None,
           range_: int | None = None) -> Utterance:
    """``text`` spoken by espeak-ng's ``voice`` (a language with an optional ``+variant``)."""
    global _espeak
    if _espeak is None:
        _espeak = _Espeak()
    x, events = _espeak.synth(text, voice, rate_wpm, pitch, range_)
    audio = _resample(x, _espeak.rate)
    ev = [(ms / 1000.0, name) for ms, name in events]
    return Utterance(audio, _phones(ev, len(audio) / RATE, "espeak"), voice, "espeak", text, rate_wpm)


def festival_voices() -> list[str]:
    """Installed Festival voices (``voice_<name>`` procedures), empty without Festival."""
    if shutil.which("festival") is None:
        return []
    roots = [Path("/usr/share/festival/voices")]
    return sorted(p.name for r in roots if r.is_dir() for lang in r.iterdir() for p in lang.iterdir() if p.is_dir())


def festival(text: str, voice: str) -> Utterance:
    """``text`` spoken by Festival's ``voice`` (speed it up or down with :func:`tempo`: its
    HTS voices ignore ``Duration_Stretch``)."""
    safe = text.replace("\\", " ").replace('"', " ")
    with tempfile.TemporaryDirectory() as d:
        wav, segs = Path(d) / "f.wav", Path(d) / "f.segs"
        script = (f"(voice_{voice})\n"
                  f"(set! u (Utterance Text \"{safe}\"))\n(utt.synth u)\n"
                  f"(utt.save.wave u \"{wav}\" 'riff)\n(utt.save.segs u \"{segs}\")\n")
        (Path(d) / "s.scm").write_text(script)
        subprocess.run(["festival", "-b", str(Path(d) / "s.scm")], check=True, capture_output=True, timeout=120)
        import soundfile as sf

        x, sr = sf.read(wav, dtype="float32")
        rows = [ln.split() for ln in segs.read_text().splitlines()[1:] if len(ln.split()) == 3]
    audio = _resample(x if x.ndim == 1 else x.mean(1), sr)
    ends = [float(r[0]) for r in rows]
    ev = [(ends[i - 1] if i else 0.0, r[2]) for i, r in enumerate(rows)]
    phones = _phones(ev, min(ends[-1], len(audio) / RATE) if ends else 0.0, "festival")
    return Utterance(audio, phones, voice, "festival", text)


def retime(utt: Utterance, audio: np.ndarray, factor: float) -> Utterance:
    """The same phones on ``audio``, which lasts 1/``factor`` of the original."""
    ph = [Phone(p.name, p.start / factor, p.end / factor, p.viseme) for p in utt.phones]
    return Utterance(audio.astype(np.float32), ph, utt.voice, utt.synth, utt.text, utt.rate_wpm, dict(utt.extra))


def tempo(utt: Utterance, factor: float) -> Utterance:
    """Speech ``factor`` times faster at the same pitch (sox's WSOLA ``tempo``)."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d) / "a.wav", Path(d) / "b.wav"
        sf.write(a, utt.audio, RATE, subtype="FLOAT")
        subprocess.run(["sox", str(a), str(b), "tempo", "-s", f"{factor:.4f}"], check=True, capture_output=True)
        y, _ = sf.read(b, dtype="float32")
    return retime(utt, y, factor)


def pad(utt: Utterance, before: float = 0.3, after: float = 0.3) -> Utterance:
    """Silence around the speech (a rest phone each side), as between a speaker's phrases."""
    a, b = int(before * RATE), int(after * RATE)
    audio = np.concatenate([np.zeros(a, np.float32), utt.audio, np.zeros(b, np.float32)])
    phones = [Phone("_", 0.0, before, "rest")]
    phones += [Phone(p.name, p.start + before, p.end + before, p.viseme) for p in utt.phones]
    last = phones[-1].end
    phones.append(Phone("_", last, len(audio) / RATE, "rest"))
    return Utterance(audio, phones, utt.voice, utt.synth, utt.text, utt.rate_wpm, dict(utt.extra))


def concat(utts: list[Utterance], gap: float = 0.0) -> Utterance:
    """One clip from several, with ``gap`` s of silence between them."""
    audio, phones, t = [], [], 0.0
    for i, u in enumerate(utts):
        if i and gap > 0:
            audio.append(np.zeros(int(gap * RATE), np.float32))
            phones.append(Phone("_", t, t + gap, "rest"))
            t += gap
        audio.append(u.audio)
        phones += [Phone(p.name, p.start + t, p.end + t, p.viseme) for p in u.phones]
        t += len(u.audio) / RATE
    u0 = utts[0]
    return Utterance(np.concatenate(audio), phones, u0.voice, u0.synth, " / ".join(u.text for u in utts), u0.rate_wpm)


def closure_spans(utt: Utterance, floor_db: float = -38.0, max_s: float = 0.15) -> list[tuple[float, float]]:
    """Each bilabial's span with the lips shut, in seconds.

    A phone's span runs from its onset to the next onset. espeak-ng puts a stop's silent
    closure at the end of the phone before it (the event marks the burst), so a p/b span is
    extended back over the silence just before it: up to ``max_s``, while the 5 ms RMS is
    ``floor_db`` below the clip's peak. Festival's stop segments already hold their closure.
    """
    hop = RATE // 200
    n = len(utt.audio) // hop
    env = 20 * np.log10(np.sqrt((utt.audio[: n * hop].reshape(n, hop) ** 2).mean(1)) + 1e-9)
    quiet = env < env.max() + floor_db
    out = []
    for p in utt.phones:
        if p.viseme != "closed":
            continue
        start = p.start
        if p.name[:1] in "pb":
            i = int(p.start * 200)
            lo = max(int((p.start - max_s) * 200), 0)
            while i - 1 >= lo and i - 1 < n and quiet[i - 1]:
                i -= 1
            start = min(start, i / 200)
        out.append((start, p.end))
    return out
