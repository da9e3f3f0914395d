"""Writing frames (and their audio) through an ffmpeg process."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from vcam_talker.errors import VcamError
from vcam_talker.safeio import private_dir
from vcam_talker.sinks.base import Sink

log = logging.getLogger(__name__)


def ffmpeg_exe() -> str:
    """Debian's ffmpeg when installed, else the binary bundled with imageio-ffmpeg."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        raise VcamError("ffmpeg not found: install it (apt-get install ffmpeg) or `pip install imageio-ffmpeg`") from None


class FfmpegFileSink:
    """Encodes RGB frames to H.264 and muxes an audio file as AAC at its own sample rate.

    Frames go to ffmpeg's stdin as raw rgb24; ffmpeg runs as a separate process, so
    encoding overlaps rendering without a thread of ours.
    """

    def __init__(self, out: Path, size: tuple[int, int], fps: int, audio: Path | None = None,
                 crf: int = 20, preset: str = "veryfast"):
        self.out = Path(out)
        self.size = size
        self.frames = 0
        w, h = size
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0"]
        if audio is not None:
            cmd += ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "160k"]
        cmd += ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", str(self.out)]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = subprocess.PIPE
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, image: np.ndarray) -> None:
        """image: HxWx3 uint8 RGB at ``size``."""
        if image.shape[1::-1] != self.size:
            raise ValueError(f"frame is {image.shape[1]}x{image.shape[0]}, sink expects {self.size[0]}x{self.size[1]}")
        try:
            self.proc.stdin.write(np.ascontiguousarray(image).tobytes())
        except BrokenPipeError:
            self.close()
        self.frames += 1

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        rc = self.proc.wait()
        if rc != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {rc}"
            raise VcamError(f"ffmpeg failed writing {self.out}: {last}")

    def __enter__(self) -> "FfmpegFileSink":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.proc.kill()
            self.proc.wait()


class FfmpegLiveSink(Sink):
    """Records the live output with its delayed audio to a file, or streams it to an
    rtmp:// or srt:// URL.

    Each tick carries one frame and exactly one frame period of audio (padded with
    silence or carried over), so the container stays in sync by construction. A named
    writer thread feeds ffmpeg through a bounded queue: a slow disk or network drops
    recorded frames (counted) instead of stalling the camera.
    """

    name = "ffmpeg"
    wants_audio = True

    def __init__(self, target: str, size: tuple[int, int], fps: int, sample_rate: int, crf: int = 23):
        self.target = target
        self.size = size
        self.fps = fps
        self.sample_rate = sample_rate
        self.crf = crf
        self.proc = None
        self.frames = 0
        self.dropped = 0
        self._pending = np.zeros(0, np.float32)
        self._owed = 0.0  # fractional samples per frame, so rates like 44100/30 add up
        self._queue: queue.Queue = queue.Queue(maxsize=2 * fps)
        self._thread: threading.Thread | None = None
        self.error: str = ""

    def open(self) -> None:
        w, h = self.size
        if "://" in self.target:
            out = [self.target]
            fmt = ["-f", "flv"] if self.target.startswith("rtmp") else ["-f", "mpegts"]
        else:
            path = Path(self.target).expanduser()
            try:
                private_dir(path.parent)  # 0700/0600: a recording of the user's face and voice
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600))
                os.chmod(path, 0o600)  # ffmpeg -y truncates it in place, keeping the mode
            except OSError as exc:
                raise VcamError(f"sinks.ffmpeg.target: cannot create {path} ({exc.strerror})") from None
            out = [str(path)]
            fmt = ["-movflags", "+frag_keyframe+empty_moov"]  # playable even if the daemon dies
        r, audio_w = os.pipe()
        # both inputs are raw with known formats: no probing, which would wait for
        # seconds of audio while the video pipe fills up
        noprobe = ["-probesize", "32", "-analyzeduration", "0", "-thread_queue_size", "64"]
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               *noprobe, "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(self.fps), "-i", "pipe:0",
               *noprobe, "-f", "s16le", "-ar", str(self.sample_rate), "-ac", "1", "-i", f"pipe:{r}",
               "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-crf", str(self.crf),
               "-pix_fmt", "yuv420p", "-g", str(2 * self.fps), "-c:a", "aac", "-b:a", "128k", *fmt, *out]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(r,))
        os.close(r)
        self._audio = os.fdopen(audio_w, "wb", buffering=0)
        self._thread = threading.Thread(target=self._write_loop, name="vcam-ffmpeg-writer", daemon=True)
        self._thread.start()

    def send(self, frame, audio: np.ndarray | None = None) -> None:
        if audio is not None and len(audio):
            self._pending = np.concatenate([self._pending, audio.astype(np.float32)])
        self._owed += self.sample_rate / self.fps
        n = int(self._owed)
        self._owed -= n
        chunk = self._pending[:n]
        self._pending = self._pending[n:]
        if len(chunk) < n:
            chunk = np.concatenate([chunk, np.zeros(n - len(chunk), np.float32)])
        if len(self._pending) > self.sample_rate // 2:  # the two clocks drifted apart
            self._pending = self._pending[-(self.sample_rate // 4):]
        pcm = (np.clip(chunk, -1, 1) * 32767).astype("<i2").tobytes()
        try:
            self._queue.put_nowait((pcm, np.ascontiguousarray(frame.image).tobytes()))
            self.frames += 1
        except queue.Full:
            self.dropped += 1

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            pcm, video = item
            try:
                self._audio.write(pcm)
                self.proc.stdin.write(video)
            except (BrokenPipeError, ValueError, OSError) as exc:
                err = self.proc.stderr.read().decode(errors="replace").strip().splitlines() if self.proc else []
                self.error = (err[-1] if err else str(exc))
                return

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for f in (self._audio, self.proc.stdin):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @property
    def detail(self) -> str:
        return f"ffmpeg -> {self.target}"
