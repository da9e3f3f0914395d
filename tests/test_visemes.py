"""Mouth shapes of the classic engine, graded by dlib against espeak-ng's phoneme times.

A short phoneme-timed clip (one voice not in the network's training set, held-out text)
goes through ``vcam-talker render``; ``benchmarks/lipmeasure.py`` scores the decoded
frames, and the same frames against the phoneme times moved 200 ms (the control, which
must score far worse). ``benchmarks/bench_visemes.py`` runs the same on many voices.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import yaml

from benchmarks import lipmeasure, speech
from tests.conftest import ROOT
from tests.lipsync import decode_frames

VOICE = "en-gb-x-rp+m3"
TEXTS = ["Maybe Bob can pump the bike by the mill.", "You move too soon, she sees three keys.",
         "I will call you back about the plan tomorrow."]
OPEN_MOUTH_PHOTO = ROOT / "avatars" / "obama_2012.jpg"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    d = tmp_path_factory.mktemp("visemes")
    utt = speech.pad(speech.concat([speech.espeak(t, VOICE, 165) for t in TEXTS], gap=0.6), 0.6, 0.6)
    wav, mp4, cfg = d / "speech.wav", d / "out.mp4", d / "config.yaml"
    sf.write(wav, utt.audio, speech.RATE, subtype="PCM_16")
    cfg.write_text(yaml.safe_dump({}))  # the defaults: what a user gets
    r = subprocess.run([sys.executable, "-m", "vcam_talker", "render", "--audio", str(wav), "--out", str(mp4),
                        "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "VCAM_TALKER_CACHE": str(d / "cache")})
    assert r.returncode == 0, r.stderr
    tr = lipmeasure.measure(decode_frames(mp4, 512, 512), 25.0)
    real = lipmeasure.score(tr, utt)
    control = lipmeasure.score(tr, lipmeasure.shifted(utt, lipmeasure.CONTROL_SHIFT_S))
    print("visemes:", {k: round(v, 3) if isinstance(v, float) else v for k, v in real.items()},
          "control recall", control["closure_recall"])
    return real, control


def test_bilabials_close_and_the_shifted_control_does_not(scored):
    real, control = scored
    assert real["bilabials"] >= 12
    assert real["closure_recall"] >= 0.9, real
    assert control["closure_recall"] <= real["closure_recall"] - 0.3, (real, control)


def test_open_vowels_stay_open(scored):
    real, _ = scored
    assert real["open_vowel_frames"] >= 10
    assert real["false_closure_rate"] <= 0.1, real


def test_rounded_vowels_are_narrower_than_spread_ones(scored):
    real, _ = scored
    assert real["rounded_frames"] >= 8 and real["spread_frames"] >= 8
    assert real["spread_minus_rounded_iod"] >= 0.05, real


def test_closures_start_on_time_and_pauses_are_still(scored):
    real, _ = scored
    assert abs(real["onset_error_ms"]) <= 40, real
    assert real["pause_frames"] >= 10
    assert real["pause_gap_max_iod"] < lipmeasure.CLOSED_IOD, real


# --- bad input and the classifier ----------------------------------------------------
def _model():
    from vcam_talker.config import Config
    from vcam_talker.engines.classic.engine import ClassicEngine

    return ClassicEngine(Config())


def _run(eng, audio):
    from vcam_talker.stream.windows import ArrayAudio, Windower

    win = Windower(ArrayAudio(audio.astype(np.float32), 16000), eng.window_spec, 25)
    return [eng.motion_for(win.window(i)) for i in range(int(len(audio) / 16000 * 25))]


@pytest.mark.parametrize("kind", ["nan", "inf", "silence", "clipped"])
def test_hostile_audio_gives_finite_motion_and_a_shut_mouth_without_speech(kind):
    eng = _model()
    speechy = speech.pad(speech.espeak("Bob, mop the bump.", "en-us", 170), 0.3, 1.0).audio
    audio = {"nan": np.full(32000, np.nan), "inf": np.full(32000, np.inf), "silence": np.zeros(32000),
             "clipped": np.clip(speechy * 30, -1, 1)}[kind]
    motions = _run(eng, audio)
    vals = np.array([[m.open, m.width, m.round, m.tuck] for m in motions])
    assert np.isfinite(vals).all()
    assert eng.motion.probs.shape == (7,) and np.isfinite(eng.motion.probs).all()
    if kind == "clipped":
        assert vals[:, 0].max() > 0.2  # still talks
        assert vals[-10:, 0].max() < 0.01  # and rests after it
    else:
        assert vals[:, 0].max() < 0.01


def test_the_speech_after_nan_is_animated_again():
    eng = _model()
    talk = speech.pad(speech.espeak("Papa, may I?", "en-us", 170), 0.2, 0.3).audio
    motions = _run(eng, np.concatenate([np.full(16000, np.nan), talk]))
    assert max(m.open for m in motions[25:]) > 0.2


def test_an_open_mouthed_photo_rests_closed_and_the_photo_itself_is_open(tmp_path, monkeypatch):
    monkeypatch.setenv("VCAM_TALKER_CACHE", str(tmp_path))
    from vcam_talker.engines.classic.motion import Motion

    eng = _model()
    av = eng.prepare(OPEN_MOUTH_PHOTO)
    rest = eng.renderer(av).render(Motion())
    tr = lipmeasure.measure(np.stack([av.image, rest]), 25.0)
    assert tr.gap[0] > 2 * lipmeasure.CLOSED_IOD  # the control: the photo shows its teeth
    assert tr.gap[1] < lipmeasure.CLOSED_IOD, tr.gap
    assert av.data["photo_teeth"][0] == 1.0  # and the renderer paints those teeth


def test_a_network_with_other_classes_is_refused(tmp_path):
    from vcam_talker.engines.classic import visemes as V

    with np.load(ROOT / "vcam_talker" / "data" / "visemes.npz") as z:
        params = {k: z[k] for k in z.files}
    params["visemes"] = np.array(list(V.VISEMES[::-1]))
    with pytest.raises(ValueError, match="classes"):
        V.VisemeNet(params)
