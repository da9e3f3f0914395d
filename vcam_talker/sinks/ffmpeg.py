"""Writing frames (and their audio) through an ffmpeg process."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from vcam_talker.errors import VcamError
from vcam_talker.safeio import private_dir
from vcam_talker.sinks.base import Sink
from vcam_talker.sinks.timeline import RecordingTimeline

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


class FfmpegFileWriter:
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
            # frame n is on screen from n/fps for a period and shows the instant n/fps, so
            # that instant's audio plays half a period in, mid-frame, as the live camera and
            # delayed mic do it (without this the mouth trails the voice by half a frame)
            cmd += ["-itsoffset", f"{0.5 / fps:.6f}", "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0",
                    "-c:a", "aac", "-b:a", "160k"]
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

    def __enter__(self) -> "FfmpegFileWriter":
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

    Audio and frames are placed by sample index (:class:`RecordingTimeline`): the audio
    goes in continuous, and each frame in the slot whose middle is its own audio, as the
    camera and the delayed mic show them. A named
    writer thread feeds ffmpeg through a bounded queue: a slow disk or network drops
    recorded frames (counted) instead of stalling the camera.

    Health: when ffmpeg exits (a dropped connection, a full disk) the writer thread says
    why through :attr:`report` (the supervisor's hook), and so does ``send`` when ffmpeg
    has taken no frame for STALLED_S (a network that hangs without failing).
    """

    name = "ffmpeg"
    wants_audio = True
    #: ffmpeg taking no frame for this long is a failure, though the process lives on
    STALLED_S = 5.0

    def __init__(self, target: str, size: tuple[int, int], fps: int, sample_rate: int, crf: int = 23):
        self.target = target
        self.size = size
        self.fps = fps
        self.sample_rate = sample_rate
        self.crf = crf
        # a stream learns only after seconds that nobody listens (SRT gives up after 3 s)
        self.confirm_s = 5.0 if "://" in target else 2.0
        self.proc = None
        self.frames = 0
        self.dropped = 0
        self.timeline = RecordingTimeline(sample_rate, fps)
        self._previous = b""  # the last frame queued, for slots the pacer missed
        self._queue: queue.Queue = queue.Queue(maxsize=2 * fps)
        self._thread: threading.Thread | None = None
        self._pcm: queue.Queue = queue.Queue(maxsize=10 * fps)  # audio, written by its own thread
        self._audio_thread: threading.Thread | None = None
        self.error: str = ""
        self._stderr: deque[str] = deque(maxlen=20)  # ffmpeg's last words, for the report
        self._stderr_thread: threading.Thread | None = None
        self._full_since: float | None = None
        self._audio = None  # the audio pipe's write end, while open

    def open(self) -> None:
        self.error, self._full_since = "", None
        self._queue = queue.Queue(maxsize=2 * self.fps)  # nothing stale from before a reopen
        self.timeline = RecordingTimeline(self.sample_rate, self.fps)  # a new file starts afresh
        self._previous = b""
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
            # fragments: playable even if the daemon dies; delay_moov writes the moov with the
            # first fragment, so an edit list can skip the AAC encoder's 1024 priming samples
            # (without it the muxer moves every frame but the first 64 ms later instead)
            fmt = ["-movflags", "+frag_keyframe+empty_moov+delay_moov"]
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
        # drained all the time: a pipe left full would block ffmpeg itself
        self._stderr_thread = threading.Thread(target=self._read_stderr, args=(self.proc.stderr,),
                                               name="vcam-ffmpeg-log", daemon=True)
        self._stderr_thread.start()
        self._thread = threading.Thread(target=self._write_loop, name="vcam-ffmpeg-writer", daemon=True)
        self._thread.start()
        self._pcm = queue.Queue(maxsize=10 * self.fps)
        self._audio_thread = threading.Thread(target=self._audio_loop, name="vcam-ffmpeg-audio", daemon=True)
        self._audio_thread.start()

    def send(self, frame, audio: np.ndarray | None = None) -> None:
        placed = self.timeline.place(frame, audio)
        if placed is None:  # the recording starts with the first rendered frame
            return
        chunk, copies = placed
        if len(chunk):
            try:
                self._pcm.put_nowait((np.clip(chunk, -1, 1) * 32767).astype("<i2").tobytes())
            except queue.Full:
                self.timeline.lost(len(chunk), 0)
        if not copies:  # this frame's slot has passed
            return
        image = np.ascontiguousarray(frame.image).tobytes()
        # a slot the pacer missed keeps the picture that was on screen
        previous, self._previous = self._previous or image, image
        try:
            self._queue.put_nowait((image, copies, previous))
            self.frames += copies
            self._full_since = None
        except queue.Full:
            self.timeline.lost(0, copies)
            self.dropped += 1
            now = time.monotonic()
            if self._full_since is None:
                self._full_since = now
            elif now - self._full_since > self.STALLED_S and not self.error:
                self.error = f"ffmpeg took no frame for {self.STALLED_S:.0f} s"
                self.report(self.error)

    def _read_stderr(self, pipe) -> None:
        for line in pipe:
            text = line.decode(errors="replace").strip()
            if text:
                self._stderr.append(text)

    def _audio_loop(self) -> None:
        # its own thread: ffmpeg reads the two pipes in an order of its own (opening its
        # inputs, it waits for a whole 64 ms audio packet), so one writer for both can
        # block on a full video pipe while ffmpeg waits for audio queued behind that frame
        while (pcm := self._pcm.get()) is not None:
            try:
                self._audio.write(pcm)
            except (BrokenPipeError, ValueError, OSError):
                return  # ffmpeg is gone: the video writer reports it

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            video, copies, previous = item
            try:
                for _ in range(copies - 1):
                    self.proc.stdin.write(previous)
                self.proc.stdin.write(video)
            except (BrokenPipeError, ValueError, OSError) as exc:
                if self.error:  # already reported (a stall); this is close() killing ffmpeg
                    return
                if self._stderr_thread is not None:  # ffmpeg is exiting: let its last line in
                    self._stderr_thread.join(timeout=1.0)
                self.error = self._stderr[-1] if self._stderr else f"ffmpeg stopped ({exc})"
                self.report(self.error)
                return

    def close(self) -> None:
        if self.proc is None:
            return
        if self.error:  # it failed: nothing more to flush, and the writer may be stuck on it
            self.proc.kill()
        for q, thread, wait in ((self._queue, self._thread, 2.0), (self._pcm, self._audio_thread, 1.0)):
            try:
                # the writer's last item: flush and end (a failed ffmpeg was killed above)
                q.put(None, timeout=0.05 if self.error else 1.0)
            except queue.Full:
                pass
            if thread is not None:
                thread.join(timeout=wait)
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
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=1.0)
        self.proc = None

    def stats(self) -> dict:
        return {"frames": self.frames, "dropped": self.dropped}

    @property
    def detail(self) -> str:
        return f"ffmpeg -> {self.target}"
