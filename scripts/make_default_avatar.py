"""Regenerate avatars/default.png from scikit-image's bundled astronaut portrait.

The image is NASA's portrait of astronaut Eileen Collins (public domain), shipped as
``skimage.data.astronaut()``; no download is involved.
"""

from pathlib import Path

import cv2
from skimage import data

out = Path(__file__).resolve().parents[1] / "avatars" / "default.png"
out.parent.mkdir(exist_ok=True)
cv2.imwrite(str(out), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
print(out)
