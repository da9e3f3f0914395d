"""The pipeline delay, which the pacer and the delayed audio both follow, and when it may
change (in a pause of the speech)."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

#: a frame ready this long (s) after its audio was captured measures a stall, not the
#: pipeline: it must not move the audio delay
MAX_READY_S = 10.0


class DelayEstimator:
    """The pipeline delay: a high percentile of 'frame ready − audio captured', plus a
    margin. Once a second :meth:`update` moves the ``wanted`` delay: up at once to that
    figure, or down slowly towards it, so the delay changes rarely and a single late frame
    is repeated rather than moving it. :meth:`apply` makes ``wanted`` the ``value`` that
    the pacer and the audio follow, but only in a pause of the speech (see
    :func:`apply_now`): there the playback splices silence, exact and inaudible, and the
    picture is idle; inside a word the correction would be a pitch glide, and a late frame
    is repeated meanwhile (video degrades first, the audio stays whole)."""

    RAISE_S = 0.003
    LOWER_S = 0.010
    FALL_SHARE = 0.1
    #: the most (s) one pause takes off the delay (see apply)
    MAX_FALL_S = 0.04
    #: a frame this much (s) later than the median is an outlier, not a measurement ...
    OUTLIER_S = 0.5
    #: ... unless this many come in a row (2 s at 25 fps)
    OUTLIER_RUN = 50
    #: a change this large (s) is applied even in speech: the picture would otherwise lag
    #: for the rest of the utterance
    FORCE_S = 0.25
    #: a change waits at most this long (s) for a pause (someone talking without a break)
    MAX_WAIT_S = 8.0

    def __init__(self, initial_s: float, margin_s: float, floor_s: float):
        self.value = initial_s
        self.wanted = initial_s
        self.margin = margin_s
        self.floor = floor_s
        #: added for the audio's sake on a busy machine (vcam_talker/audio/headroom.py)
        self.headroom_s = 0.0
        self._samples: deque[float] = deque(maxlen=250)
        self._settled = False
        self._force = False
        self._pending_since: float | None = None
        self._median: float | None = None
        self._outlier_run = 0
        self.outliers = 0  # frames late by an input stall, not counted in the delay
        self.deferred = 0  # applies that waited for a pause
        self.forced = 0  # changes applied inside speech (FORCE_S, MAX_WAIT_S, a resync)
        self._lock = threading.Lock()

    def observe(self, ready_s: float) -> None:
        if not 0.0 <= ready_s <= MAX_READY_S:  # a stall or a clock step, not the pipeline
            return
        with self._lock:
            med = self._median
            if med is not None and ready_s > med + self.OUTLIER_S:
                # a stall of the input (a sound server restarting, a starved capture): its
                # frames are late once, not the pipeline's delay from now on. Kept up for
                # OUTLIER_RUN frames in a row, it is the new normal (a slower engine)
                self._outlier_run += 1
                self.outliers += 1
                if self._outlier_run < self.OUTLIER_RUN:
                    return
                self._samples.clear()
                self._settled = False
                self._median = None
            self._outlier_run = 0
            self._samples.append(ready_s)

    def median_ready(self) -> float | None:
        """The median measured 'frame ready - audio captured' (s), None before any."""
        with self._lock:
            return float(np.median(self._samples)) if self._samples else None

    def resync(self) -> None:
        """After a stall: drop what was measured through it; the next update sets the
        delay from fresh measurements alone, applied at once (the audio resyncs anyway)."""
        with self._lock:
            self._samples.clear()
            self._settled = False
            self._force = True
            self._median = None

    def update(self) -> float:
        """Called about once a second; returns the wanted delay."""
        with self._lock:
            if len(self._samples) >= 25:
                target = max(float(np.percentile(self._samples, 98)) + self.margin, self.floor) + self.headroom_s
                # hysteresis: small wobbles of the percentile must not move the audio delay
                if not self._settled or target > self.wanted + self.RAISE_S:
                    self.wanted, self._settled = target + self.RAISE_S, True
                elif target < self.wanted - self.LOWER_S:
                    # slowly, but a tenth of a large excess a second: a delay left high by
                    # a transient must not keep the mic late for minutes
                    self.wanted -= max(0.001, self.FALL_SHARE * (self.wanted - target))
                self._median = float(np.median(self._samples))
            return self.wanted

    @property
    def measured(self) -> bool:
        """``wanted`` comes from measurements (not the initial guess, nor from before a stall)."""
        return self._settled

    @property
    def pending(self) -> bool:
        """A change waits to be applied."""
        return self.wanted != self.value

    def apply(self, now: float, quiet: bool) -> bool:
        """Make ``wanted`` the delay if :func:`apply_now` says so; True when it changed.
        ``quiet``: the audio about to be played is a pause."""
        with self._lock:
            if self.wanted == self.value:
                self._pending_since = None
                return False
            if self._pending_since is None:
                self._pending_since = now
            go, forced = apply_now(self.wanted - self.value, now - self._pending_since, quiet, self._force)
            if not go:
                return False
            self.deferred += int(now > self._pending_since and not forced)
            self.forced += int(forced)
            if not forced and self.wanted < self.value - self.MAX_FALL_S:
                # a fall removes silence, and a pause guarantees only about 60 ms of it:
                # the rest waits for the next pause rather than being stretched out of speech
                self.value -= self.MAX_FALL_S
                self._pending_since = now
                return True
            self.value, self._pending_since, self._force = self.wanted, None, False
            return True


def apply_now(change_s: float, waited_s: float, quiet: bool, force: bool = False) -> tuple[bool, bool]:
    """Whether a pending delay change is applied now, and whether that is forced (inside
    speech). In a pause: always. In speech: after a stall (``force``), when the change is
    over FORCE_S, or when it has waited MAX_WAIT_S for a pause."""
    if quiet:
        return True, False
    forced = force or abs(change_s) > DelayEstimator.FORCE_S or waited_s >= DelayEstimator.MAX_WAIT_S
    return forced, forced
