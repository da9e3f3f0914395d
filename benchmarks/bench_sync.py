"""One sync figure for every output, in one run: the virtual camera with the delayed mic,
the daemon's ffmpeg recording, and the offline render, on three espeak-ng voices.

    .venv/bin/python benchmarks/bench_sync.py [--json PATH]

Each output is measured the same independent way (tests/avsync.py): dlib re-detects the
lips on the frames that output delivers, and the inner-lip gap, held from each frame's
display time to the next, is cross-correlated with that output's own audio (its 20 ms
RMS) on a 1 ms grid. Positive: the mouth moves after the voice. Control: the same output
with its audio 100 ms later must read 100 ms less (the mp4s are remuxed by ffmpeg with
-itsoffset, streams copied; for the camera the mic's clock is moved).

The daemon runs as a process on a private PulseAudio: the three voices are played one
after the other into vcam_in, the frames go to a recording camera (plugin), the delayed
speech to vcam_mic (recorded from its monitor), and the ffmpeg sink records to an mp4.
Each voice's own WAV is then rendered offline.
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
import soundfile as sf
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import report  # noqa: E402
from tests.avsync import espeak_voice, face_crop, first_onset, offset, read_mp4  # noqa: E402
from tests.conftest import DEFAULT_AVATAR  # noqa: E402
from tests.lipsync import inner_lip_gap  # noqa: E402
from tests.live_harness import RATE, live_config  # noqa: E402
from tests.pulse_env import private_pulse  # noqa: E402

VOICES = {
    "en-us": ["Hello, can you hear me?", "Papa bought a big map.", "The quick brown fox jumps over the lazy dog."],
    "en-us+f3": ["Good morning to you all.", "Yes, we are in sync.", "Let us look at the numbers again."],
    "de": ["Guten Morgen, wie geht es dir?", "Papa kauft eine große Karte.", "Wir sprechen heute über Zahlen."],
}
GAP_S, EDGE_S, SHIFT_S = 1.0, 0.6, 0.1


def voice_clip(tmp: Path, voice: str, texts: list[str]) -> np.ndarray:
    parts = [np.zeros(int(EDGE_S * RATE), np.float32)]
    for i, text in enumerate(texts):
        parts += [espeak_voice(tmp / f"{voice}_{i}.wav", text, voice), np.zeros(int(GAP_S * RATE), np.float32)]
    parts[-1] = np.zeros(int(EDGE_S * RATE), np.float32)
    return np.concatenate(parts)


def spans(bounds: list[tuple[float, float]], first_src: float, first_out: float) -> list[tuple[float, float]]:
    """Each voice's (start, end) in an output's clock, from the first onset in both."""
    lag = first_out - first_src
    return [(a + lag, b + lag) for a, b in bounds]


def mp4_figures(path: Path, crop, bounds, first_src) -> list[tuple[float, float, float]]:
    """Per voice: (offset, offset with the audio 100 ms later, correlation), seconds."""
    shifted = path.with_name(path.stem + "_shift.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-itsoffset", str(SHIFT_S), "-i", str(path),
                    "-map", "0:v:0", "-map", "1:a:0", "-c", "copy", str(shifted)], check=True)
    out = []
    t, frames, audio, a0 = read_mp4(path, crop)
    gap = inner_lip_gap(frames)
    sp = spans(bounds, first_src, a0 + first_onset(audio, RATE))
    ts, fs, aus, a0s = read_mp4(shifted, crop)
    gaps = inner_lip_gap(fs)
    for span in sp:
        off, corr = offset(t, gap, audio, RATE, a0, span)
        ctl, _ = offset(ts, gaps, aus, RATE, a0s, span)
        out.append((off, ctl, corr))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from vcam_talker.audio.capture import AudioCapture
    from vcam_talker.audio.ring import AudioRing
    from vcam_talker.config import to_dict
    from vcam_talker.engines.classic.engine import ClassicEngine

    with tempfile.TemporaryDirectory() as tmp, private_pulse() as server:
        tmp = Path(tmp)
        os.environ["VCAM_TALKER_CACHE"] = str(tmp / "cache")
        clips = {v: voice_clip(tmp, v, texts) for v, texts in VOICES.items()}
        bounds, pos = [], 0.0
        for clip in clips.values():
            bounds.append((pos, pos + len(clip) / RATE))
            pos += len(clip) / RATE
        whole = np.concatenate(list(clips.values()))
        first_src = first_onset(whole, RATE)
        wav = tmp / "voices.wav"
        sf.write(wav, whole, RATE, subtype="PCM_16")

        cfg = live_config()
        crop = face_crop(ClassicEngine(cfg).prepare(DEFAULT_AVATAR).landmarks, (cfg.video.width, cfg.video.height))
        rec_mp4 = tmp / "recording.mp4"
        d = to_dict(cfg)
        d["status"]["interval_s"] = 1.0
        d["sinks"]["ffmpeg"].update(enabled=True, target=str(rec_mp4))
        cfg_path = tmp / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(d))
        cam = tmp / "cam.npz"
        x0, y0, x1, y1 = crop
        denv = dict(server.env, VCAM_TALKER_PLUGINS="tests.recording_cam", VCAM_RECORD_OUT=str(cam),
                    VCAM_RECORD_CROP=f"{y0},{y1},{x0},{x1}", PYTHONPATH=str(ROOT), VCAM_TALKER_CACHE=str(tmp / "cache"))
        mic_ring = AudioRing(RATE, len(whole) / RATE + 60)
        mic_rec = AudioCapture("vcam_mic_monitor", mic_ring).start()
        proc = subprocess.Popen([sys.executable, "-m", "vcam_talker", "run", "--config", str(cfg_path)],
                                cwd=ROOT, env=denv, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        deadline, steady = time.monotonic() + 30, 0
        while time.monotonic() < deadline and steady < 2:  # until the mic delay has settled
            line = proc.stderr.readline()
            lines.append(line.rstrip())
            m = re.search(r"A/V offset ([+-][\d.]+) ms", line)
            steady = steady + 1 if m and abs(float(m.group(1))) < 3 else 0
        mic_start = mic_ring.end
        subprocess.run(["paplay", "--device=vcam_in", str(wav)], check=True, env=server.env)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        lines += err.splitlines()
        mic_rec.stop()
        mic = mic_ring.read(mic_start, mic_ring.end - mic_start)
        mic_t0 = mic_ring.time_of(mic_start)

        figures: dict[str, list[tuple[float, float, float]]] = {}
        data = np.load(cam)
        times, gap = data["times"], inner_lip_gap(data["frames"])
        cam_spans = spans(bounds, first_src, mic_t0 + first_onset(mic, RATE))
        figures["camera + delayed mic"] = []
        for sp in cam_spans:
            off, corr = offset(times, gap, mic, RATE, mic_t0, sp)
            figures["camera + delayed mic"].append((off, offset(times, gap, mic, RATE, mic_t0 + SHIFT_S, sp)[0], corr))
        figures["ffmpeg recording"] = mp4_figures(rec_mp4, crop, bounds, first_src)

        still = tmp / "render.yaml"
        still.write_text(yaml.safe_dump({"engine": {"classic": {"sway": 0.0}}}))
        figures["offline render"] = []
        for voice, clip in clips.items():
            src, out = tmp / f"{voice}.wav", tmp / f"{voice}.mp4"
            sf.write(src, clip, RATE, subtype="PCM_16")
            r = subprocess.run([sys.executable, "-m", "vcam_talker", "render", "--audio", str(src), "--out", str(out),
                                "--config", str(still)], cwd=ROOT, capture_output=True, text=True,
                               env=dict(os.environ, VCAM_TALKER_CACHE=str(tmp / "cache")))
            assert r.returncode == 0, r.stderr
            figures["offline render"] += mp4_figures(out, crop, [(0.0, len(clip) / RATE)], first_onset(clip, RATE))

    rows, voices = [], list(VOICES)
    print(f"{'output':<22}" + "".join(f"{v:>24}" for v in voices) + "   (ms: offset / with audio +100 ms)")
    for name, figs in figures.items():
        print(f"{name:<22}" + "".join(f"{o * 1e3:>+11.0f} / {c * 1e3:>+7.0f} r{r:.2f}" for o, c, r in figs))
        for voice, (o, c, r) in zip(voices, figs):
            rows += [(f"{name}, {voice}: mouth after voice", o * 1e3, "ms"),
                     (f"{name}, {voice}: control, audio +100 ms", c * 1e3, "ms"),
                     (f"{name}, {voice}: correlation at the peak", r, "r")]
    last = [ln for ln in lines if "| repeated" in ln]
    report("bench_sync", rows, extra={"voices": VOICES, "grid_ms": 1.0, "control_shift_ms": SHIFT_S * 1e3,
                                      "last_status": last[-1] if last else ""}, out=args.json)


if __name__ == "__main__":
    main()
