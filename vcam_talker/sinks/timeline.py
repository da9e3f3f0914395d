"""Where a live recorder puts each tick's audio and frame in its container.

The convention is the one the virtual camera and the delayed mic follow: a frame is on
screen for one period, and the audio of the instant it shows plays halfway through that
period. In a container whose frame n starts at n/fps, frame n's own audio sample must
therefore sit at (n + 1/2)/fps.
"""

from __future__ import annotations

import numpy as np


class RecordingTimeline:
    """Maps live ticks onto a container with continuous audio and one-period frames.

    The audio is the master: every sample the pacer hands over is written once, in order
    (a gap in it, after a stall or a dropped tick, is closed up rather than filled). Each
    frame goes into the slot whose middle is its own audio sample, so a frame is written
    twice when a slot would stay empty and left out when its slot has already passed.
    Placing by sample index, not by counting ticks, is what keeps the recording in sync:
    tick jitter, the pacer's phase locking and repeated frames move nothing.
    """

    def __init__(self, sample_rate: int, fps: int):
        self.rate, self.fps = sample_rate, fps
        self.offset: int | None = None  # container sample = ring index + offset
        self.written = 0  # audio samples in the container
        self.slots = 0  # frames in the container
        self._next = 0  # ring index of the sample expected next
        self.duplicated = self.late = self.gaps = 0

    def _instant(self, frame) -> int | None:
        """The ring sample the frame's slot is for (a repeat is for its own tick's instant)."""
        if not frame.repeated and frame.sample >= 0:
            return frame.sample
        if frame.index >= 0:  # the Windower's centre of frame ``index``
            return (frame.index * self.rate * 2 + self.fps) // (2 * self.fps)
        return None

    def place(self, frame, audio: np.ndarray | None) -> tuple[np.ndarray, int] | None:
        """(audio samples to write now, times to write the frame), or None before the
        recording has started: it starts at the first rendered frame whose audio carries
        its ring index (``AudioSpan.start``)."""
        start = getattr(audio, "start", None)
        samples = np.zeros(0, np.float32) if audio is None else np.asarray(audio, np.float32)
        if self.offset is None:
            if frame.repeated or frame.sample < 0 or start is None:
                return None
            self.offset = round(self.rate / (2 * self.fps)) - frame.sample
        else:
            if start is None:
                start = self._next  # index unknown: take it as continuous
            if start >= self._next and start + self.offset != self.written and self.written > 0:
                self.gaps += 1  # samples skipped (or lost in a dropped tick): close the gap up
                self.offset = self.written - start
            # start < _next: a new pacer re-reads a few samples; they are dropped below
        pos = start + self.offset
        if pos > self.written:  # only when starting: silence before the first samples
            samples = np.concatenate([np.zeros(pos - self.written, np.float32), samples])
        elif pos < self.written:
            samples = samples[self.written - pos:]
        self.written += len(samples)
        self._next = start + (len(audio) if audio is not None else 0)
        inst = self._instant(frame)
        if inst is None:
            copies = 1
        else:
            slot = round((inst + self.offset) * self.fps / self.rate - 0.5)
            copies = 0 if slot < self.slots else min(slot - self.slots, 2 * self.fps) + 1
        self.late += copies == 0
        self.duplicated += max(copies - 1, 0)
        self.slots += copies
        return samples, copies

    def lost(self, samples: int, copies: int) -> None:
        """A placed tick never reached the container (the writer's queue was full)."""
        self.written -= samples
        self.slots -= copies
