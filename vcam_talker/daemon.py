"""The Daemon wires the stages together and owns their lifecycle: start, stop, status.

    audio in (capture | demo loop) → AudioRing → Windower → EngineWorker → FrameStore
        → Pacer → sinks (virtual camera, ffmpeg, null)
    AudioRing → DelayedPlayback (virtual mic), delayed by the measured pipeline delay
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vcam_talker.config import Config
from vcam_talker.engines import create_engine
from vcam_talker.engines.base import Engine
from vcam_talker.errors import VcamError
from vcam_talker.sinks.base import Sink
from vcam_talker.stream.pipeline import DelayEstimator, EngineWorker, FrameStore, Pacer, PipelineStats
from vcam_talker.stream.windows import Windower

log = logging.getLogger(__name__)

DEMO_SPEECH = Path(__file__).resolve().parent / "data" / "demo_speech.wav"
RING_SECONDS = 20.0


@dataclass
class SinkState:
    sink: Sink
    ok: bool
    error: str = ""


class Daemon:
    """One running vcam-talker: build with a validated Config, then start()/stop().

    extra_sinks: sinks added by the caller (tests, benchmarks), opened like the others.
    engine: an already built engine to use instead of the configured one.
    """

    def __init__(self, cfg: Config, *, demo: bool = False, extra_sinks: list[Sink] | None = None,
                 engine: Engine | None = None):
        self.cfg = cfg
        self.engine = engine
        self.demo = demo or cfg.audio.input == "demo"
        self.extra_sinks = list(extra_sinks or [])
        self.stats = PipelineStats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.source = None
        self.playback = None
        self.sinks: list[SinkState] = []
        self.started_at = 0.0
        self._last_status = 0.0
        self._last_delay_update = 0.0
        self.first_frame = threading.Event()

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        from vcam_talker.audio.ring import AudioRing

        cfg = self.cfg
        if self.engine is None:
            self.engine = create_engine(cfg)
        self.avatar = self.engine.prepare(cfg.avatar_path())
        spec = self.engine.window_spec
        self.ring = AudioRing(spec.sample_rate, RING_SECONDS)
        self.windower = Windower(self.ring, spec, cfg.video.fps)
        fps = cfg.video.fps
        # before measurements arrive: the lookahead, a capture block and two frames
        initial = spec.after_s + cfg.audio.block_ms / 1000 + 2.0 / fps
        self.delay = DelayEstimator(initial_s=initial, margin_s=0.5 / fps, floor_s=spec.after_s)
        self.store = FrameStore(capacity=max(8, fps))

        self._open_sinks()
        self._start_source()
        self._start_playback()
        self.worker = EngineWorker(ring=self.ring, windower=self.windower,
                                   render=lambda w: self.engine.render(w, self.avatar), store=self.store,
                                   stats=self.stats, delay=self.delay, stop=self._stop, on_error=self._engine_error)
        self.pacer = Pacer(ring=self.ring, windower=self.windower, fps=fps, store=self.store,
                           sinks=[s.sink for s in self.sinks if s.ok], stats=self.stats, delay=self.delay,
                           stop=self._stop, idle_image=lambda: self.avatar.image, on_tick=self._on_tick)
        self.started_at = time.monotonic()
        self._threads = [self.worker, self.pacer]
        for t in self._threads:
            t.start()
        log.info("running: engine %s, %dx%d at %d fps, input %s, output %s, sinks: %s",
                 self.engine.name, cfg.video.width, cfg.video.height, fps,
                 "demo loop" if self.demo else cfg.audio.input, cfg.audio.output if self.playback else "none",
                 ", ".join(s.sink.detail for s in self.sinks if s.ok) or "none")

    def stop(self, timeout: float = 2.0) -> None:
        """Stop every stage; returns within about ``timeout`` seconds."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.05, deadline - time.monotonic()))
        for part in (self.source, self.playback):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:
                    log.warning("stopping %s: %s", type(part).__name__, exc)
        for s in self.sinks:
            if s.ok:
                s.sink.close()
        if getattr(self, "engine", None) is not None:
            self.engine.close()

    # ---- parts -----------------------------------------------------------------------
    def _open_sinks(self) -> None:
        from vcam_talker.sinks.ffmpeg import FfmpegLiveSink
        from vcam_talker.sinks.virtualcam import VirtualCamSink

        cfg = self.cfg
        size, fps, rate = (cfg.video.width, cfg.video.height), cfg.video.fps, self.engine.window_spec.sample_rate
        wanted: list[Sink] = []
        if cfg.sinks.virtualcam.enabled:
            wanted.append(VirtualCamSink(cfg.sinks.virtualcam, size, fps))
        if cfg.sinks.ffmpeg.enabled:
            wanted.append(FfmpegLiveSink(cfg.sinks.ffmpeg.target, size, fps, rate, cfg.sinks.ffmpeg.crf))
        wanted += self.extra_sinks
        for sink in wanted:
            self.sinks.append(self._try_open(sink))
        cam = [s for s in self.sinks if s.sink.name == "virtualcam"]
        if cam and not cam[0].ok and cfg.sinks.fallback_record and not cfg.sinks.ffmpeg.enabled:
            target = str(Path(cfg.sinks.fallback_record).expanduser())
            log.warning("no virtual camera: recording to %s instead", target)
            self.sinks.append(self._try_open(FfmpegLiveSink(target, size, fps, rate, cfg.sinks.ffmpeg.crf)))

    def _try_open(self, sink: Sink) -> SinkState:
        try:
            sink.open()
            return SinkState(sink, True)
        except VcamError as exc:
            log.error("%s", exc)
            return SinkState(sink, False, str(exc))

    def _start_source(self) -> None:
        cfg = self.cfg
        if self.demo:
            import soundfile as sf

            from vcam_talker.audio.demo import LoopingSource

            clip, rate = sf.read(str(DEMO_SPEECH), dtype="float32")
            if rate != self.ring.sample_rate:
                import soxr

                clip = soxr.resample(clip, rate, self.ring.sample_rate)
            self.source = LoopingSource(self.ring, clip, block_ms=cfg.audio.block_ms)
        else:
            from vcam_talker.audio.capture import AudioCapture
            from vcam_talker.audio.routing import route_device

            device = route_device(cfg.audio.input, "input")
            self.source = AudioCapture(device, self.ring, block_ms=cfg.audio.block_ms)
        self.source.start()

    def _start_playback(self) -> None:
        out = self.cfg.audio.output
        if out == "none":
            return
        from vcam_talker.audio.playback import DelayedPlayback
        from vcam_talker.audio.routing import route_device

        try:
            self.playback = DelayedPlayback(route_device(out, "output"), self.ring)
            self.playback.set_target_delay(self.audio_delay())
            self.playback.start()
        except VcamError as exc:
            log.error("audio output: %s; continuing without delayed audio", exc)
            self.playback = None

    def audio_delay(self) -> float:
        """Capture-to-mic delay that matches the picture. Frame i goes out at the first tick
        at or after time_of(c_i) + delay and stays up for one period, so on average it is on
        screen centred one period after that: the audio waits that long too."""
        return self.delay.value + 1.0 / self.cfg.video.fps + self.cfg.audio.trim_ms / 1000

    def _engine_error(self, exc: Exception) -> None:
        n = self.stats.engine_errors
        if n == 1 or n % 100 == 0:
            log.error("engine failed on a frame (%d so far), repeating the last frame: %s", n,
                      " ".join(str(exc).split()))

    # ---- per tick (pacer thread) ---------------------------------------------------
    def _on_tick(self, now: float) -> None:
        if not self.first_frame.is_set():
            self.first_frame.set()
        if now - self._last_delay_update >= 1.0:
            self._last_delay_update = now
            self.delay.update()
            if self.playback is not None:
                self.playback.set_target_delay(self.audio_delay())
        if now - self._last_status >= self.cfg.status.interval_s:
            self._last_status = now
            log.info("%s", self.status_line())

    def status(self) -> dict:
        s = self.stats.snapshot()
        s.update({"delay_ms": round(self.delay.value * 1e3, 1), "queue_depth": max(0, self.store.newest() - self.pacer.due_index()),
                  "uptime_s": round(time.monotonic() - self.started_at, 1), "engine": self.engine.name,
                  "sinks": {st.sink.name: ("ok" if st.ok else st.error) for st in self.sinks}})
        if self.playback is not None and self.playback.current_delay == self.playback.current_delay:
            s["audio_delay_ms"] = round(self.playback.current_delay * 1e3, 1)
            s["av_offset_ms"] = round((self.playback.current_delay - self.audio_delay()) * 1e3, 1)
            ps = self.playback.stats
            s["playback"] = {"speed": round(ps.speed, 4), "inserted_frames": ps.inserted_frames,
                             "removed_samples": ps.removed_samples, "underflows": ps.underflows,
                             "lost_samples": ps.lost_samples}
        if self.source is not None and hasattr(self.source, "stats") and not isinstance(self.source.stats, dict):
            cs = self.source.stats
            s["capture"] = {k: getattr(cs, k) for k in ("nan_samples", "clipped_samples", "overflows")
                            if hasattr(cs, k)}
        return s

    def status_line(self) -> str:
        s = self.status()
        av = f"{s['av_offset_ms']:+.1f} ms" if "av_offset_ms" in s else \
            "n/a (no audio output yet)" if self.playback is not None else "n/a (no audio output)"
        return (f"fps {s['fps']:.1f} | engine ms p50 {s['engine_ms_p50']:.1f} p95 {s['engine_ms_p95']:.1f} | "
                f"queue {s['queue_depth']} | delay {s['delay_ms']:.0f} ms | A/V offset {av} | "
                f"repeated {s['frames_repeated']} skipped {s['windows_skipped']}")

