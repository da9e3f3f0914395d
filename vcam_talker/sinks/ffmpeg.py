"""Writing frames (and their audio) through an ffmpeg process."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np

from vcam_talker.errors import VcamError

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
