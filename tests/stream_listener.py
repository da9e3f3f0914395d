"""A local RTMP or SRT listener for the streaming sink tests: ffmpeg itself receiving on
127.0.0.1 and copying what arrives into a file, as an ingest server or OBS would."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path


def url(proto: str, port: int) -> str:
    """What the daemon publishes to (the caller's side)."""
    return f"rtmp://127.0.0.1:{port}/live/vcam" if proto == "rtmp" else f"srt://127.0.0.1:{port}"


class Listener:
    """``ffmpeg -listen 1 -i rtmp://…`` or ``-i srt://…?mode=listener``, copying to ``out``."""

    def __init__(self, proto: str, port: int, out: Path):
        self.out, self.proto = out, proto
        if proto == "rtmp":
            src = ["-listen", "1", "-i", url(proto, port)]
        else:  # what OBS's Media Source opens for an encoder in caller mode (obsproject.com/kb)
            src = ["-f", "mpegts", "-i", f"srt://127.0.0.1:{port}?mode=listener"]
        fmt = ["-f", "flv"] if proto == "rtmp" else ["-f", "mpegts"]
        self.proc = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *src, "-c", "copy",
                                      *fmt, str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.started = time.monotonic()

    def wait_listening(self, port: int, timeout: float = 10.0) -> None:
        """Until the port is bound (read from /proc: a test connection would use up the
        RTMP listener's one accept)."""
        table, state = ("/proc/net/tcp", "0A") if self.proto == "rtmp" else ("/proc/net/udp", None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and (state is None or cols[3] == state):
                    return
            time.sleep(0.02)
        raise AssertionError(f"nothing listening on {self.proto} port {port}")

    def size(self) -> int:
        return self.out.stat().st_size if self.out.exists() else 0

    def wait_bytes(self, n: int, timeout: float) -> float:
        """When the file first held ``n`` bytes (monotonic); raises after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.size() >= n:
                return time.monotonic()
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"listener got {self.size()} bytes, wanted {n}; rc {self.proc.poll()}: "
                             f"{self.proc.stderr.read() if self.proc.poll() is not None else ''}")

    def kill(self) -> None:
        """The listener dies (no goodbye to the sender)."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """Ends cleanly, so the copied file is finished."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def probe(path: Path) -> dict:
    """Per stream type: codec, start time (s) and duration (s) of what was received."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_type,codec_name,start_time,duration:format=duration",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout
    doc = json.loads(out)
    streams = {s["codec_type"]: s for s in doc["streams"]}
    streams["format"] = doc["format"]
    return streams


def packet_times(path: Path, kind: str) -> list[tuple[float, float]]:
    """(pts, duration) in seconds of every packet of the stream of ``kind`` (a or v)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", kind, "-show_entries",
                          "packet=pts_time,duration_time", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.split():
        pts, _, dur = line.strip(",").partition(",")  # ffprobe may end a row with a comma
        if pts not in ("", "N/A"):
            rows.append((float(pts), float(dur) if dur not in ("", "N/A") else 0.0))
    return rows
