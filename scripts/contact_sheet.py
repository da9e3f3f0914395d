"""One frame per viseme, from a render of phoneme-timed speech with the classic engine.

    .venv/bin/python scripts/contact_sheet.py [--avatar PATH] [--out PNG]

espeak-ng speaks a sentence that holds every viseme; the engine renders it as it would
live (motion from the audio windows, never from the phoneme times). For each viseme the
sheet shows the frame, inside a phone of that viseme, where the engine's own probability
for it peaks, with a zoom on the mouth underneath.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import speech  # noqa: E402
from vcam_talker.config import Config  # noqa: E402
from vcam_talker.engines.classic import visemes as V  # noqa: E402
from vcam_talker.engines.classic.engine import ClassicEngine  # noqa: E402
from vcam_talker.stream.windows import ArrayAudio, Windower, frame_count  # noqa: E402

TEXT = "Bob moves through a vast field, and we see a smile."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--avatar", type=Path, help="portrait (default: the bundled one)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "contact_sheet.png")
    ap.add_argument("--voice", default="en-us")
    args = ap.parse_args()
    os.environ.setdefault("VCAM_TALKER_CACHE", tempfile.mkdtemp())
    utt = speech.pad(speech.espeak(TEXT, args.voice, 150), 0.5, 0.5)
    eng = ClassicEngine(Config())
    av = eng.prepare(args.avatar or eng.config.avatar_path())
    win = Windower(ArrayAudio(utt.audio, speech.RATE), eng.window_spec, 25)
    frames, probs = [], []
    for i in range(frame_count(len(utt.audio), speech.RATE, 25)):
        m = eng.motion_for(win.window(i))
        frames.append(eng.renderer(av).render(m))
        probs.append(eng.motion.probs.copy())
    probs = np.array(probs)
    t = np.arange(len(frames)) / 25
    lm = av.landmarks
    cx, cy = lm[48:68].mean(0)
    fh = float(lm[8, 1] - lm[27, 1])
    tiles = []
    for k, v in enumerate(V.VISEMES):
        inside = np.zeros(len(t), bool)
        for p in utt.phones:
            if p.viseme == v:
                inside |= (t >= p.start) & (t < p.end)
        if not inside.any():
            continue
        i = int(np.argmax(np.where(inside, probs[:, k], -1)))
        f = frames[i]
        x0, x1 = int(cx - 0.9 * fh), int(cx + 0.9 * fh)
        y0, y1 = int(cy - 1.35 * fh), int(cy + 0.55 * fh)
        face = cv2.resize(np.ascontiguousarray(f[max(y0, 0):y1, max(x0, 0):x1]), (240, 254))
        mx0, mx1, my0, my1 = int(cx - 0.45 * fh), int(cx + 0.45 * fh), int(cy - 0.25 * fh), int(cy + 0.3 * fh)
        mouth = cv2.resize(np.ascontiguousarray(f[my0:my1, mx0:mx1]), (240, 146), interpolation=cv2.INTER_CUBIC)
        tile = np.concatenate([face, mouth])
        tile[:26] = (tile[:26] * 0.35).astype(np.uint8)
        phone = next((p.name for p in utt.phones if p.start <= t[i] < p.end), "")
        cv2.putText(tile, f"{v} /{phone}/ {t[i]:.2f}s", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
        tiles.append(tile)
    sheet = np.concatenate(tiles, axis=1)
    args.out.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(args.out, sheet.shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
