#!/usr/bin/env python3
"""Lip shapes of the classic engine, measured: phoneme-timed speech in, dlib on the frames out.

For each voice and speaking rate: espeak-ng (its library, with phoneme events) or Festival
speaks held-out sentences; ``vcam-talker render`` (the production path, default config)
renders them; dlib re-detects the lips on the decoded frames; ``benchmarks/lipmeasure.py``
scores them against the phoneme times:

- closure recall: p/b/m whose span shows a frame with the lips shut (gap ≤ a third of the
  surrounding vowels' and < 0.03 IOD), and the same with the phoneme times moved 200 ms
  (the control, which must score far worse);
- false closures: frames inside open vowels with a gap < 0.03 IOD;
- rounded minus spread: mean mouth width on spread vowels minus rounded ones, IOD;
- closure onset error: first shut frame minus the closure's start (ms, mean);
- pause stillness: the gap's standard deviation in pauses;
- A/V lag: ``tests/avsync.py``'s cross-correlation on the mp4.

    .venv/bin/python benchmarks/bench_visemes.py [--quick] [--avatar PATH] [--root CHECKOUT]

``--root`` renders with another checkout of vcam-talker (the "before" column).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import lipmeasure, speech  # noqa: E402
from benchmarks._common import RESULTS, machine  # noqa: E402

TEXTS = {
    "en": ["Bobby and Pam baked a plum pie for mom.", "You two chose blue shoes, we keep three green beans.",
           "The man by the bump in the map may be Ben.", "Move the boot to the pool, then see me.",
           "Pack my bag, and put the map by the lamp.", "A father saw a large car park in the dark."],
    "es": ["Mi abuela Paloma compra pan y mermelada.", "Tu sobrino bebe mucho zumo de uva.",
           "Pepe, mira el mapa de Bilbao.",
           "Pablo toma un vaso de agua en la playa.", "La mama de Ana baila mambo."],
    "de": ["Bald baut meine Mama am Bach ein Boot.", "Du musst die Blumen mit Wasser begiessen.",
           "Peter, bitte hol mir Papier.",
           "Mein Vater fahrt am Abend nach Bamberg.", "Am Mittwoch malt Anna ein Bild vom Hafen."],
    "fr": ["Mon papa boit beaucoup de bon vin.", "Tu as vu la boule bleue sous le pommier?",
           "Bruno mange une pomme mure.",
           "Papa va a la plage avec Marie.", "Le chat de Paul mange la pomme."],
    "ca": ["El meu pare beu aigua amb la mare.", "Bon dia, Pau, vols un bombo de xocolata?",
           "Tu i jo mirem el mapa de Barcelona.",
           "La mare de la Marta parla amb el pare.", "Bon dia, anem a la platja de Palamos."],
}
FESTIVAL_LANG = {"upc_ca_ona_hts": "ca"}
# Held out of the training set: these espeak-ng variants, Spanish, Festival's Catalan HTS
# voice, and every text. Festival's English HTS voice (slt) is in it, with other texts.
VOICES = [("espeak", "en-us+m3"), ("espeak", "en-gb-x-rp+f3"), ("espeak", "en-029+m7"),
          ("espeak", "es+f5"), ("espeak", "de+m3"), ("espeak", "fr+f3"),
          ("festival", "upc_ca_ona_hts"), ("festival", "cmu_us_slt_arctic_hts")]
# espeak-ng: words a minute; Festival: sox tempo (1.3: faster)
RATES = {"espeak": (150, 230), "festival": (1.0, 1.3)}
GOALS = {"closure_recall": 0.95, "false_closure_rate": 0.05, "spread_minus_rounded_iod": 0.06,
         "control_gap": 0.30, "onset_error_frames": 1.0}


def clip(synth: str, voice: str, rate) -> speech.Utterance:
    lang = FESTIVAL_LANG.get(voice) or voice.split("+")[0].split("-")[0]
    texts = TEXTS.get(lang, TEXTS["en"])
    if synth == "festival":
        parts = [speech.festival(t, voice) for t in texts]
        parts = [speech.tempo(p, float(rate)) if rate != 1.0 else p for p in parts]
    else:
        parts = [speech.espeak(t, voice, int(rate)) for t in texts]
    return speech.pad(speech.concat(parts, gap=0.6), 0.6, 0.6)


def render(root: Path, wav: Path, out: Path, cfg: Path, avatar: Path | None, cache: Path) -> float:
    cmd = [sys.executable, "-m", "vcam_talker", "render", "--audio", str(wav), "--out", str(out),
           "--config", str(cfg)]
    if avatar:
        cmd += ["--avatar", str(avatar)]
    env = dict(os.environ, VCAM_TALKER_CACHE=str(cache), PYTHONPATH=str(root))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"render failed: {r.stderr[-2000:]}")
    return time.perf_counter() - t0


def av_lag(mp4: Path, frames: np.ndarray) -> float:
    import dlib

    from tests.avsync import mp4_offset

    r = max(dlib.get_frontal_face_detector()(frames[0], 1), key=lambda r: r.area())
    h, w = frames.shape[1:3]
    m = int(0.4 * r.width())
    crop = (max(r.left() - m, 0) // 2 * 2, max(r.top() - m, 0) // 2 * 2,
            min(r.right() + m, w) // 2 * 2, min(r.bottom() + m, h) // 2 * 2)
    return mp4_offset(mp4, crop)[0] * 1000


def run_one(root: Path, tmp: Path, synth: str, voice: str, rate, avatar: Path | None, classic: dict) -> dict:
    from tests.lipsync import decode_frames

    utt = clip(synth, voice, rate)
    tag = f"{voice}_{rate}".replace("+", "_")
    wav, mp4 = tmp / f"{tag}.wav", tmp / f"{tag}.mp4"
    sf.write(wav, utt.audio, speech.RATE, subtype="PCM_16")
    cfg = tmp / "config.yaml"
    if not cfg.exists():
        cfg.write_text(yaml.safe_dump({"engine": {"classic": classic}} if classic else {}))
    secs = render(root, wav, mp4, cfg, avatar, tmp / "cache")
    frames = decode_frames(mp4, 512, 512)
    tr = lipmeasure.measure(frames, 25.0)
    s = lipmeasure.score(tr, utt)
    ctl = lipmeasure.score(tr, lipmeasure.shifted(utt, lipmeasure.CONTROL_SHIFT_S))
    s.update(voice=voice, synth=synth, rate=rate, seconds=utt.duration, render_s=secs,
             control_recall=ctl["closure_recall"], av_lag_ms=av_lag(mp4, frames))
    return s


def table(rows: list[dict], title: str) -> str:
    head = ("voice", "rate", "p/b/m", "recall", "control", "false cl.", "spread−round", "onset ms", "pause std",
            "A/V ms")
    lines = [title, "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["voice"], str(r["rate"]), str(r["bilabials"]), f"{100 * r['closure_recall']:.0f} %",
            f"{100 * r['control_recall']:.0f} %",
            f"{100 * r['false_closure_rate']:.1f} % of {r['open_vowel_frames']}",
            f"{r['spread_minus_rounded_iod']:+.3f}", f"{r['onset_error_ms']:+.0f}",
            f"{r['pause_gap_std_iod']:.4f}", f"{r['av_lag_ms']:+.0f}"]) + " |")
    return "\n".join(lines)


def goals(rows: list[dict]) -> dict[str, bool]:
    return {
        "closure_recall >= 95 %": all(r["closure_recall"] >= GOALS["closure_recall"] for r in rows),
        "false closures <= 5 %": all(r["false_closure_rate"] <= GOALS["false_closure_rate"] for r in rows),
        "rounded >= 0.06 IOD narrower": all(r["spread_minus_rounded_iod"] >= GOALS["spread_minus_rounded_iod"]
                                            for r in rows),
        "control >= 30 points below": all(r["closure_recall"] - r["control_recall"] >= GOALS["control_gap"]
                                          for r in rows),
        "onset within one frame (mean)": all(abs(r["onset_error_ms"]) <= 40.0 for r in rows),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one English and one other voice, one rate")
    ap.add_argument("--avatar", type=Path, help="another portrait (default: the bundled one)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the vcam-talker checkout that renders")
    ap.add_argument("--lookahead-ms", type=float, help="engine.classic.lookahead_ms (default: the config's 60)")
    ap.add_argument("--json", type=Path, default=RESULTS / "bench_visemes.json")
    args = ap.parse_args()
    voices = [v for v in VOICES if v[0] != "festival" or v[1] in speech.festival_voices()]
    if len(voices) < len(VOICES):
        print("note: Festival or its HTS voices are not installed (scripts/setup.sh installs them); their rows are skipped")
    if args.quick:
        voices = [voices[0], voices[3]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for synth, voice in voices:
            for rate in RATES[synth][:1 if args.quick else 2]:
                classic = {} if args.lookahead_ms is None else {"lookahead_ms": args.lookahead_ms}
                rows.append(run_one(args.root.resolve(), Path(tmp), synth, voice, rate, args.avatar, classic))
                print(f"  {voice} @ {rate}: recall {rows[-1]['closure_recall']:.2f} "
                      f"control {rows[-1]['control_recall']:.2f}", flush=True)
    la = "" if args.lookahead_ms is None else f", lookahead {args.lookahead_ms:g} ms"
    print(table(rows, f"bench_visemes ({args.root.resolve().name}, avatar {args.avatar or 'default'}{la})"))
    g = goals(rows)
    for k, ok in g.items():
        print(f"  {'met' if ok else 'NOT met'}: {k}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "bench_visemes", "machine": machine(), "root": str(args.root),
                                     "avatar": str(args.avatar or "default"), "lookahead_ms": args.lookahead_ms, "rows": rows, "goals": g}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
