"""The live daemon, as a real process, for a minute of speech on a private PulseAudio:
end-to-end latency, A/V offset, fps, CPU share of the daemon process, repeated frames.

    .venv/bin/python benchmarks/bench_live.py [--seconds 60] [--size 512] [--fps 25] [--json PATH]

Speech (espeak-ng, with 1.2 s gaps) is played into the null sink vcam_in; the daemon
captures vcam_in's monitor, publishes to a recording pyvirtualcam backend (loaded as a
plugin) and plays the delayed speech into vcam_mic, whose monitor this script records.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import report  # noqa: E402
from tests.conftest import DEFAULT_AVATAR, espeak_wav  # noqa: E402
from tests.live_harness import (RATE, LiveRun, av_offset_xcorr, av_offsets, envelope, live_config,  # noqa: E402
                                onsets, speech_with_gaps, utterance_spans)
from tests.pulse_env import private_pulse  # noqa: E402

TEXTS = ["Hello, can you hear me?", "Papa bought a big map.", "Yes, we are in sync.", "Good morning to you all.",
         "The quick brown fox jumps over the lazy dog.", "Let us look at the numbers again."]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from vcam_talker.audio.capture import AudioCapture
    from vcam_talker.audio.ring import AudioRing
    from vcam_talker.config import to_dict
    from vcam_talker.engines.classic.engine import ClassicEngine

    with tempfile.TemporaryDirectory() as tmp, private_pulse() as server:
        env = server.env
        tmp = Path(tmp)
        os.environ["VCAM_TALKER_CACHE"] = str(tmp / "cache")
        texts = (TEXTS * 20)
        reps = []
        wav, audio = speech_with_gaps(espeak_wav, tmp, texts[:1])
        while len(audio) / RATE < args.seconds:
            reps.append(texts[len(reps)])
            wav, audio = speech_with_gaps(espeak_wav, tmp, reps)
        cfg = live_config(video={"width": args.size, "height": args.size, "fps": args.fps})
        av = ClassicEngine(cfg).prepare(DEFAULT_AVATAR)
        (x0, y0), (x1, y1) = av.landmarks[48:68].min(0) - 10, av.landmarks[48:68].max(0) + 10
        cfg_path = tmp / "config.yaml"
        d = to_dict(cfg)
        d["status"]["interval_s"] = 1.0
        cfg_path.write_text(yaml.safe_dump(d))
        rec = tmp / "cam.npz"
        denv = dict(env, VCAM_TALKER_PLUGINS="tests.recording_cam", VCAM_RECORD_OUT=str(rec),
                    VCAM_RECORD_CROP=f"{int(y0)},{int(y1)},{int(x0)},{int(x1)}", PYTHONPATH=str(ROOT),
                    VCAM_TALKER_CACHE=str(tmp / "cache"))
        mic_ring, src_ring = AudioRing(RATE, args.seconds + 60), AudioRing(RATE, args.seconds + 60)
        mic_rec = AudioCapture("vcam_mic_monitor", mic_ring).start()
        src_rec = AudioCapture("vcam_in_monitor", src_ring).start()
        proc = subprocess.Popen([sys.executable, "-m", "vcam_talker", "run", "--config", str(cfg_path)],
                                cwd=ROOT, env=denv, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        deadline = time.monotonic() + 30
        offset_ok = 0
        while time.monotonic() < deadline:  # until the mic delay has settled
            line = proc.stderr.readline()
            lines.append(line.rstrip())
            m = re.search(r"A/V offset ([+-][\d.]+) ms", line)
            offset_ok = offset_ok + 1 if m and abs(float(m.group(1))) < 3 else 0
            if offset_ok >= 2:
                break
        mic_start, src_start = mic_ring.end, src_ring.end
        c0, w0 = cpu_seconds(proc.pid), time.monotonic()
        subprocess.run(["paplay", "--device=vcam_in", str(wav)], check=True, env=env)
        c1, w1 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        lines += err.splitlines()
        mic_rec.stop()
        src_rec.stop()
        data = np.load(rec)
        times, frames = data["times"], data["frames"]
        keep = times >= src_ring.time_of(src_start)
        run = LiveRun(times[keep], frames[keep], mic_ring.read(mic_start, mic_ring.end - mic_start),
                      mic_ring.time_of(mic_start), src_ring.read(src_start, src_ring.end - src_start),
                      src_ring.time_of(src_start), status={})
        src_on = run.src_t0 + onsets(envelope(run.src))
        mic_on = run.mic_t0 + onsets(envelope(run.mic))
        n = min(len(src_on), len(mic_on))
        latency = (mic_on[:n] - src_on[:n]) * 1e3
        offs = av_offsets(run) * 1e3
        xoff = av_offset_xcorr(run) * 1e3
        # per utterance by cross-correlation: the whole mouth movement against the whole
        # loudness curve, so neither the 40 ms frame grid nor the first phoneme decides it
        per_utt = np.array([av_offset_xcorr(run, span=sp) for sp in utterance_spans(run)]) * 1e3
        fps = (len(run.frame_times) - 1) / (run.frame_times[-1] - run.frame_times[0])
        last = [ln for ln in lines if "| repeated" in ln][-1]
        repeated = int(re.search(r"repeated (\d+)", last).group(1))
        skipped = int(re.search(r"skipped (\d+)", last).group(1))
        rows = [
            ("utterances", float(n), "count"),
            ("latency p50 (speech onset vcam_in -> vcam_mic)", float(np.percentile(latency, 50)), "ms"),
            ("latency p95", float(np.percentile(latency, 95)), "ms"),
            ("A/V offset p50 (mouth onset - mic onset)", float(np.percentile(offs, 50)), "ms"),
            ("|A/V offset| p95", float(np.percentile(np.abs(offs), 95)), "ms"),
            ("A/V offset by cross-correlation, whole run", xoff, "ms"),
            ("A/V offset per utterance by cross-correlation p50", float(np.percentile(per_utt, 50)), "ms"),
            ("|A/V offset| per utterance by cross-correlation p95", float(np.percentile(np.abs(per_utt), 95)), "ms"),
            ("fps achieved", fps, "fps"),
            ("daemon CPU (one core = 100)", 100 * (c1 - c0) / (w1 - w0), "%"),
            ("frames repeated (whole run)", float(repeated), "frames"),
            ("windows skipped (whole run)", float(skipped), "frames"),
        ]
        report("bench_live", rows, extra={"size": args.size, "fps": args.fps, "seconds": w1 - w0,
                                           "latency_ms": latency.tolist(), "av_offsets_ms": offs.tolist(),
                                           "av_offsets_xcorr_ms": per_utt.tolist(),
                                           "last_status": last}, out=args.json)


if __name__ == "__main__":
    main()
