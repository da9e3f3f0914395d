"""Render the demo sentence with the classic engine and save docs/contact_sheet.png:
real output frames picked by their motion (closed, half open, open, blink)."""

from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from vcam_talker.config import Config
from vcam_talker.engines.classic.engine import ClassicEngine
from vcam_talker.stream.windows import ArrayAudio, Windower, frame_count

ROOT = Path(__file__).resolve().parents[1]
audio, rate = sf.read(str(ROOT / "vcam_talker" / "data" / "demo_speech.wav"), dtype="float32")
eng = ClassicEngine(Config())
av = eng.prepare(eng.config.avatar_path())
win = Windower(ArrayAudio(audio, rate), eng.window_spec, 25)
frames, motions = [], []
for i in range(frame_count(len(audio), rate, 25)):
    m = eng.motion_for(win.window(i))
    frames.append(eng.renderer(av).render(m))
    motions.append(m)
opens = np.array([m.open for m in motions])
blinks = np.array([m.blink for m in motions])
picks = [("closed (silence)", int(np.argmin(opens + blinks))),
         ("half open", int(np.argmin(np.abs(opens - 0.5 * opens.max()) + blinks))),
         ("open", int(np.argmax(opens - blinks))),
         ("blink", int(np.argmax(blinks)))]
tiles = []
for label, i in picks:
    tile = frames[i][96:480, 96:416]
    tile = np.ascontiguousarray(tile)
    tile[:30] = (tile[:30] * 0.35).astype(np.uint8)
    cv2.putText(tile, f"{label}  t={i / 25:.2f}s", (8, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    tiles.append(tile)
sheet = np.concatenate(tiles, axis=1)
out = ROOT / "docs" / "contact_sheet.png"
out.parent.mkdir(exist_ok=True)
cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
print(out, sheet.shape, [(l, i) for l, i in picks])
