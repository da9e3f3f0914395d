"""Test sync: a white flash on the camera and a click on the mic, both made from the same
audio instant, sent through the live pipeline; the measured gap is the A/V offset a
meeting sees.

For each of a few marks, a ring sample S a few hundred ms ahead of the live edge is
chosen as the centre of a frame k (frames carry their centre sample):

* video: frame k is rendered normally and then replaced by a white frame
  (:meth:`SyncProbe.render`, from Daemon._render); the pacer's frame observer notes the
  monotonic time it is first handed to the sinks (:meth:`SyncProbe.published`). If the
  engine skips frame k (it fell behind), the next frame it renders flashes instead and
  the mark moves to that frame's centre, as long as the click has not been played yet;
* audio: the delayed playback replaces its output with a 5 ms full-scale 2 kHz burst
  where it plays ring sample S and notes that sample's DAC time (:class:`ClickTrack`,
  called from DelayedPlayback.render through ``mark_click``).

A frame stays up for one period, so it is seen centred half a period after it is
published (the same reason Daemon.audio_delay adds half a period). The offset is

    offset_ms = click DAC time - (flash publish time + 0.5 / fps)

with the sign of status's ``av_offset_ms``: positive = the audio is later than the video.
It includes audio.trim_ms on purpose: it is what the meeting gets.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np

#: EBU R37: audio may lag the picture by up to 60 ms and lead it by up to 40 ms
OK_LEAD_MS, OK_LAG_MS = 40.0, 60.0
CLICK_S = 0.005
CLICK_HZ = 2000.0


@dataclass
class Mark:
    index: int  # the frame that flashes
    sample: int  # its centre: the ring sample that clicks
    published: float | None = None  # monotonic time the flash frame reached the sinks
    dac: float | None = None  # DAC time of the click's first sample
    rendered: bool = False  # the flash frame is rendered


class ClickTrack:
    """Adds a click to the playback's output where each marked ring sample plays, and
    reports each one's DAC time. ``apply`` runs on the audio thread, once per block."""

    def __init__(self, marks: list[Mark]):
        self.marks = list(marks)
        self._todo = sorted(marks, key=lambda m: m.sample)
        self._rest = np.zeros(0, np.float32)  # the part of a burst that spills into the next block

    def apply(self, out: np.ndarray, first: int, n: int, p0: float, p1: float, dac_time: float,
              rate: float) -> None:
        if len(self._rest):
            k = min(len(self._rest), len(out))
            out[:k] = self._rest[:k]
            self._rest = self._rest[k:]
        while self._todo and n > 0 and self._todo[0].sample < p1:
            m = self._todo.pop(0)
            # out[first + j] plays ring position p0 + j * (p1 - p0) / n; a sample spliced
            # away in silence plays where the splice is
            j = first + max(0, int(round((m.sample - p0) * n / (p1 - p0))))
            burst = click_burst(rate)
            k = min(len(burst), len(out) - j)
            out[j:j + k] = burst[:k]
            self._rest = burst[k:]
            m.dac = dac_time + j / rate


def click_burst(rate: float) -> np.ndarray:
    n = int(round(CLICK_S * rate))
    return np.sin(2 * np.pi * CLICK_HZ * np.arange(n) / rate).astype(np.float32)


class SyncProbe:
    """Runs test sync against one daemon; see the module docstring."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.last: dict | None = None  # the last result, for status
        self._marks: list[Mark] = []  # of the test running now
        self._busy = threading.Lock()

    # ---- hooks on the frame path: cheap, and nothing at all while no test runs ---------
    def render(self, index: int, image: np.ndarray) -> np.ndarray:
        """The engine thread, per frame: white for a mark's frame."""
        for m in self._marks:
            if not m.rendered and index >= m.index:
                if index != m.index:  # frame m.index was skipped: this one shows the mark
                    if m.dac is not None:
                        continue  # too late: the click has played
                    m.index, m.sample = index, self.daemon.windower.center(index)
                m.rendered = True
                return np.full_like(image, 255)
        return image

    def published(self, frame, now: float) -> None:
        """The pacer thread, per frame handed to the sinks."""
        for m in self._marks:
            if m.published is None and m.rendered and frame.sample == m.sample:
                m.published = now

    # ---- the test --------------------------------------------------------------------
    def run(self, timeout: float = 5.0, clicks: int = 3, spacing_s: float = 0.6, lead_s: float = 0.3) -> dict:
        d = self.daemon
        pb = d.audio.playback
        if pb is None or not math.isfinite(pb.current_delay):
            return self._done({"error": "no audio output: test sync needs the delayed mic playing "
                                        f"(audio.output is {d.cfg.audio.output!r})"})
        if not self._busy.acquire(blocking=False):
            return {"error": "a test sync is already running"}
        try:
            fps, w = d.cfg.video.fps, d.windower
            # ahead of every window the engine could have rendered yet, and of the playback
            k0 = w.latest_complete(d.ring.end) + math.ceil(lead_s * fps)
            marks = [Mark(k, w.center(k)) for k in (k0 + round(i * spacing_s * fps) for i in range(clicks))]
            self._marks = marks
            pb.mark_click(ClickTrack(marks))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not all(m.published and m.dac for m in marks):
                time.sleep(0.02)
                pb.poll_clicks()
        finally:
            pb.mark_click(None)
            self._marks = []
            self._busy.release()
        half = 0.5 / fps
        offsets = [round((m.dac - (m.published + half)) * 1e3, 1) for m in marks if m.published and m.dac]
        res: dict = {"offsets_ms": offsets, "clicks": clicks, "at": time.time(),
                     # monotonic times, to check against recordings of the camera and the mic
                     "flash_published": [m.published for m in marks], "click_dac": [m.dac for m in marks]}
        if offsets:
            res["median_ms"] = round(float(np.median(offsets)), 1)
        missing = [f"frame {m.index}: " + ("no flash published" if not m.published else "no click played")
                   for m in marks if not (m.published and m.dac)]
        if missing:
            res["error"] = f"{len(missing)} of {clicks} marks incomplete after {timeout:.0f} s: " + "; ".join(missing)
        res["ok"] = not missing and -OK_LEAD_MS <= res["median_ms"] <= OK_LAG_MS
        return self._done(res)

    def _done(self, res: dict) -> dict:
        res.setdefault("ok", False)
        self.last = res
        return res
