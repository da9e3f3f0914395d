"""Working-day soak: the daemon as a real process for --minutes with speech through a real
sound server, avatar swaps, a sound-server restart and a camera loss on the way.

    .venv/bin/python benchmarks/soak_workday.py [--minutes 60] [--server pipewire|pulse] [--json PATH]

Speech (espeak-ng, 1.2 s gaps) is played into vcam_in round after round; each round the
script records vcam_in's and vcam_mic's monitors, collects the camera's mouth crops (a
bounded recording camera, benchmarks/soak_cam.py) and measures what came out: unmatched
40 ms chunks of the delayed mic against the input, the A/V offset, repeated frames. A
sampler reads the daemon's RSS, fds, threads and /status every few seconds. Events: an
avatar swap every --swap-every s; at 40 % of the run the sound server is killed and
restarted between rounds; at 70 % the camera fails while a round plays (for the round,
at least --cam-loss s).
Audio counters (lost samples, underflows, resyncs) that grow between the server kill and
5 s after both streams are back count as the restart's, apart from the rest.

Bounds (pass/fail in the table): after warm-up RSS grows under 25 MB, fds and threads end
within 2 of where they started; no lost (audio_match) or missing chunk and no lost sample outside
the restart; |A/V offset| (per-utterance median) at the start and the end within 40 ms.
The 8-hour figures extrapolate least-squares slopes after warm-up.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import report  # noqa: E402
from benchmarks import soak_cam  # noqa: E402
from benchmarks.soak import COUNT_BOUND, RSS_BOUND_MB, sample  # noqa: E402
from tests.conftest import DEFAULT_AVATAR, espeak_wav  # noqa: E402
from tests.daemon_proc import DaemonProc, free_port, write_atomic  # noqa: E402
from tests.live_harness import (RATE, LiveRun, audio_match, av_sync, counter_deltas, frame_timing,  # noqa: E402
                                live_config, speech_with_gaps)

TEXTS = ["Hello, can you hear me?", "Papa bought a big map.", "Yes, we are in sync.", "Good morning to you all.",
         "The quick brown fox jumps over the lazy dog.", "Let us look at the numbers again."]
AV_BOUND_MS = 40.0
PLUGINS = "tests.recording_cam,benchmarks.soak_cam"


def daemon_config(port: int) -> dict:
    from vcam_talker.config import to_dict

    d = to_dict(live_config())
    d["status"].update(interval_s=10.0, http=f"127.0.0.1:{port}")
    return d


def settle(d: DaemonProc, timeout: float = 20.0) -> None:
    """Until the daemon's own A/V offset has been under 3 ms twice in a row (the mic delay
    has glided to the video's), as bench_live waits."""
    ok, deadline = 0, time.monotonic() + timeout
    while ok < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        off = d.status().get("av_offset_ms")
        ok = ok + 1 if off is not None and abs(off) < 3 else 0


class Sampler(threading.Thread):
    """(t, RSS MB, fds, threads) and the /status answer every ``every`` s."""

    def __init__(self, d: DaemonProc, t0: float, every: float):
        super().__init__(name="soak-sampler", daemon=True)
        self.d, self.t0, self.every = d, t0, every
        self.rows: list[tuple[float, float, int, int]] = []
        self.statuses: list[tuple[float, dict]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            t = time.monotonic() - self.t0
            try:
                self.rows.append((t, *sample(self.d.proc.pid)))
                self.statuses.append((t, self.d.status()))
            except (OSError, ValueError):  # a status answer that timed out: the next one
                continue


class Soak:
    def __init__(self, tmp: Path, server, crop, wav: Path, audio: np.ndarray):
        self.tmp, self.server, self.wav, self.audio = tmp, server, wav, audio
        self.t0 = time.monotonic()
        self.gone, self.request = tmp / "cam_gone", tmp / "dump_request"
        self.n_dump = 0
        self.cam_times: list[np.ndarray] = []
        self.cam_repeated = 0
        cfg = daemon_config(free_port())
        self.cfg = cfg
        self.d = DaemonProc(tmp, cfg, env=server.env, plugins=PLUGINS, extra_env={
            "VCAM_RECORD_CROP": ",".join(map(str, crop)), "VCAM_CAM_GONE_FILE": str(self.gone),
            "VCAM_SOAK_DUMP": str(self.request), "VCAM_SOAK_KEEP_S": str(len(audio) / RATE + 5)})

    def status(self, tries: int = 5) -> dict:
        """/status, retried: on a loaded machine one answer may time out."""
        for i in range(tries):
            try:
                return self.d.status()
            except OSError:
                if i == tries - 1:
                    raise
                time.sleep(1.0)

    def dump(self, timeout: float = 10.0):
        """The camera's times since the last dump and its recent crops."""
        self.n_dump += 1
        out = self.tmp / f"dump{self.n_dump}.npz"
        self.request.write_text(str(out))
        deadline = time.monotonic() + timeout
        while not out.exists():
            if time.monotonic() > deadline:
                self.request.unlink(missing_ok=True)
                return None
            time.sleep(0.05)
        data = soak_cam.load(out)
        self.cam_times.append(data["times"])
        self.cam_repeated += int(data["repeated"].sum())
        return data

    def round(self, with_video: bool = True) -> dict:
        """Plays the speech once; what came out of the mic and the camera meanwhile."""
        from vcam_talker.audio.capture import AudioCapture
        from vcam_talker.audio.ring import AudioRing

        secs = len(self.audio) / RATE + 10
        mic_ring, src_ring = AudioRing(RATE, secs), AudioRing(RATE, secs)
        before = self.status()
        t_start = time.monotonic()
        with AudioCapture("vcam_mic_monitor", mic_ring), AudioCapture("vcam_in_monitor", src_ring):
            time.sleep(0.5)
            mic_start, src_start = mic_ring.end, src_ring.end
            subprocess.run(["paplay", "--device=vcam_in", str(self.wav)], check=True, env=self.server.env,
                           timeout=secs + 30)
            time.sleep(1.0 + self.status()["delay_ms"] / 1e3)  # the delayed tail
            mic, src = mic_ring.read(mic_start, mic_ring.end - mic_start), src_ring.read(src_start,
                                                                                          src_ring.end - src_start)
            mic_t0, src_t0 = mic_ring.time_of(mic_start), src_ring.time_of(src_start)
        after = self.status()
        r = {"t": t_start - self.t0, "counters": counter_deltas(before, after),
             "daemon_av_offset_ms": after.get("av_offset_ms"), "video": with_video}
        data = self.dump() if with_video else None
        keep = np.zeros(0, bool) if data is None else data["crop_times"] >= src_t0
        run = LiveRun(data["crop_times"][keep] if data is not None else np.zeros(0),
                      data["crops"][keep] if data is not None else np.zeros(0), mic, mic_t0, src, src_t0, {})
        r["audio"] = audio_match(run)
        if keep.sum() > 50:
            r["av"] = av_sync(run)
            r["frames"] = frame_timing(run.frame_times)
        return r


def fit_per_hour(t_s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (value at t=0, slope per hour)."""
    slope, icpt = np.polyfit(t_s / 3600.0, y, 1)
    return float(icpt), float(slope)


def run_soak(seconds: float, kind: str = "pipewire", swap_every: float = 300.0, cam_loss_s: float = 20.0,
             every: float = 5.0, texts: list[str] = TEXTS, warmup_s: float | None = None) -> dict:
    from tests.pulse_env import PrivatePulse
    from vcam_talker.engines.classic.engine import ClassicEngine
    from tests.live_harness import mouth_box

    # warm-up: start-up, caches, and both avatars prepared once (the first swap adds ~100 MB)
    warmup_s = min(2 * swap_every + 30.0, seconds / 3) if warmup_s is None else warmup_s
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["VCAM_TALKER_CACHE"] = str(tmp / "cache")
        second = tmp / "second.png"
        img = np.asarray(Image.open(DEFAULT_AVATAR).convert("RGB"))[:, ::-1]
        Image.fromarray(np.ascontiguousarray(img)).save(second)  # mirrored: the mouth box still fits
        crop = mouth_box(ClassicEngine, DEFAULT_AVATAR)
        wav, audio = speech_with_gaps(espeak_wav, tmp, texts)
        pp = PrivatePulse(kind)
        try:
            server = pp.start()
            s = Soak(tmp, server, crop, wav, audio)
            d = s.d
            with d:
                d.started()
                settle(d)
                s.t0 = t0 = time.monotonic()
                sampler = Sampler(d, t0, every)
                sampler.start()
                rounds, swaps, events = [], 0, {}
                next_swap = swap_every
                restart_at, cam_at = 0.4 * seconds, 0.7 * seconds
                try:
                    while time.monotonic() - t0 < seconds:
                        el = time.monotonic() - t0
                        swapped = el >= next_swap
                        if swapped:
                            swaps += 1
                            s.cfg["avatar"] = {"image": [str(DEFAULT_AVATAR), str(second)][swaps % 2]}
                            write_atomic(d.config_path, s.cfg)
                            next_swap += swap_every
                        if "restart" not in events and el >= restart_at:
                            t_kill = time.monotonic()
                            pp.kill()
                            d.wait_for("audio input lost", since=t_kill, timeout=15)
                            time.sleep(2.0)
                            t_up = time.monotonic()
                            s.server = pp.start()
                            t_in, _ = d.wait_for("audio input back", since=t_up, timeout=30)
                            t_out, _ = d.wait_for("audio output back", since=t_up, timeout=30)
                            events["restart"] = {"kill": t_kill - t0, "server_up": t_up - t0,
                                                 "input_back": t_in - t0, "output_back": t_out - t0}
                            time.sleep(5.0)
                            continue
                        if "camera_loss" not in events and el >= cam_at:
                            t_gone = time.monotonic()
                            s.gone.touch()
                            d.wait_for("failed (", since=t_gone, timeout=10)
                            r = s.round(with_video=False)  # audio must not care
                            rest = cam_loss_s - (time.monotonic() - t_gone)
                            time.sleep(max(0.0, rest))
                            t_back = time.monotonic()
                            s.gone.unlink()
                            t_ok, _ = d.wait_for("is back", since=t_back, timeout=30)
                            events["camera_loss"] = {"gone": t_gone - t0, "restored": t_back - t0, "back": t_ok - t0}
                            r["camera_lost"] = True
                            rounds.append(r)
                            continue
                        rounds.append(s.round())
                        rounds[-1]["swap_at_start"] = swapped
                except (Exception, KeyboardInterrupt) as e:  # keep what was measured
                    events["aborted"] = {"t": time.monotonic() - t0, "error": repr(e)}
                sampler.stop.set()
                sampler.join(10)
                s.dump()
                final = s.status() if d.alive() else (sampler.statuses[-1][1] if sampler.statuses else {})
                d.terminate()
            if d.record.exists():  # whatever the camera sent after the last dump
                s.cam_times.append(soak_cam.load(d.record)["times"])
            log = [(round(t - s.t0, 2), ln) for t, ln in d.lines if "ALSA lib" not in ln and "Expression" not in ln]
            errors = [ln for _, ln in d.lines if ": ERROR:" in ln]
            reloads = d.count("reloaded (file changed)")
        finally:
            pp.close()
    r = summarise(rounds, sampler, events, s, final, errors, reloads, swaps, seconds, warmup_s, kind)
    r["log"] = log[-3000:]
    return r


def summarise(rounds, sampler, events, s, final, errors, reloads, swaps, seconds, warmup_s, kind) -> dict:
    a = np.array(sampler.rows)
    warm = a[a[:, 0] >= warmup_s] if (a[:, 0] >= warmup_s).sum() >= 3 else a[len(a) // 2:]
    ran = float(a[-1, 0]) if len(a) else 0.0
    out = {"server": kind, "seconds": ran, "planned_s": seconds, "warmup_s": warmup_s, "events": events, "swaps": swaps,
           "reloads": reloads, "errors": errors, "samples": a.tolist()}
    for i, name in ((1, "rss_mb"), (2, "fds"), (3, "threads")):
        icpt, slope = fit_per_hour(warm[:, 0], warm[:, i])
        out[name] = {"start": float(warm[0, i]), "end": float(warm[-1, i]), "min": float(warm[:, i].min()),
                     "max": float(warm[:, i].max()), "slope_per_h": slope, "at_8h": icpt + 8 * slope}
    # audio counters from the sampler: the restart's window apart
    rs = events.get("restart")
    win = (rs["kill"] - 1.0, max(rs["input_back"], rs["output_back"]) + 5.0) if rs else (-1.0, -1.0)
    normal = {k: 0 for k in ("underflows", "lost_samples", "resyncs")}
    restart = dict(normal)
    for (_, prev), (t, cur) in zip(sampler.statuses, sampler.statuses[1:]):
        dlt = counter_deltas(prev, cur)
        for k in normal:
            (restart if win[0] <= t <= win[1] else normal)[k] += dlt[k]
    out["audio_counters"], out["audio_counters_restart"] = normal, restart
    out["unmatched_chunks"] = sum(r["audio"]["unmatched"] for r in rounds)
    out["lost_chunks"] = sum(r["audio"]["lost"] for r in rounds)
    out["lost_chunks_swap_rounds"] = sum(r["audio"]["lost"] for r in rounds if r.get("swap_at_start"))
    out["missing_chunks"] = sum(r["audio"]["missing"] for r in rounds)
    out["loud_chunks"] = sum(r["audio"]["loud_chunks"] for r in rounds)
    out["utterances_lost"] = sum(max(0, r["audio"]["utterances_in"] - r["audio"]["utterances_out"]) for r in rounds)
    av = [r for r in rounds if "av" in r]
    out["av_start"], out["av_end"] = (av[0]["av"], av[-1]["av"]) if av else (None, None)
    out["av_median_all_ms"] = [r["av"]["median_ms"] for r in av]
    times = np.concatenate(s.cam_times) if s.cam_times else np.zeros(0)
    cl = events.get("camera_loss")
    out["frames"] = frame_timing(times)
    if cl and len(times) > 1:  # the outage itself is not a frame gap of the running camera
        dt = np.diff(times) * 1e3
        inside = (times[1:] > cl["gone"] + s.t0) & (times[:-1] < cl["back"] + s.t0 + 1.0)
        out["camera_outage_gap_ms"] = float(dt[inside].max()) if inside.any() else None
        ok = dt[~inside]
        out["frames"].update(fps=float(len(ok) / ok.sum() * 1e3), gap_p99_ms=float(np.percentile(ok, 99)),
                             gap_max_ms=float(ok.max()))
    out["frames_repeated"] = int(final.get("frames_repeated", -1))
    out["frames_emitted"] = int(final.get("frames_emitted", -1))
    out["frames_repeated_recorded"] = s.cam_repeated
    out["rounds"] = rounds
    out["pass"] = {
        "rss": out["rss_mb"]["end"] - out["rss_mb"]["start"] < RSS_BOUND_MB,
        "fds": abs(out["fds"]["end"] - out["fds"]["start"]) <= COUNT_BOUND,
        "threads": abs(out["threads"]["end"] - out["threads"]["start"]) <= COUNT_BOUND,
        "audio": out["lost_chunks"] == 0 and out["missing_chunks"] == 0 and normal["lost_samples"] == 0
        and out["utterances_lost"] == 0,
        "av": bool(av) and all(abs(x["median_ms"]) <= AV_BOUND_MS for x in (out["av_start"], out["av_end"])),
        "errors": not errors}
    return out


def table(r: dict) -> list[tuple[str, float, str]]:
    nan = float("nan")
    avs, ave = r["av_start"] or {}, r["av_end"] or {}
    rs = r["events"].get("restart", {})
    rows = [("duration", r["seconds"], "s"), ("speech rounds", float(len(r["rounds"])), "count"),
            ("avatar swaps (reloads applied)", float(r["reloads"]), "count")]
    for name, unit in (("rss_mb", "MB"), ("fds", "fds"), ("threads", "threads")):
        x = r[name]
        rows += [(f"{name} after warm-up", x["start"], unit), (f"{name} at the end", x["end"], unit),
                 (f"{name} min..max: min", x["min"], unit), (f"{name} min..max: max", x["max"], unit),
                 (f"{name} slope (least squares)", x["slope_per_h"], f"{unit}/h"),
                 (f"{name} extrapolated to 8 h", x["at_8h"], unit)]
    rows += [("A/V offset at the start, per-utterance median", avs.get("median_ms", nan), "ms"),
             ("A/V offset at the start, worst utterance", avs.get("worst_ms", nan), "ms"),
             ("A/V offset at the end, per-utterance median", ave.get("median_ms", nan), "ms"),
             ("A/V offset at the end, worst utterance", ave.get("worst_ms", nan), "ms"),
             ("loud 40 ms chunks played", float(r["loud_chunks"]), "chunks"),
             ("lost audio: chunks unmatched, each utterance at its own lag", float(r["lost_chunks"]), "chunks"),
             ("  of which in rounds that began with an avatar swap", float(r["lost_chunks_swap_rounds"]), "chunks"),
             ("chunks unmatched at one steady lag per round", float(r["unmatched_chunks"]), "chunks"),
             ("missing chunks (mic recording too short)", float(r["missing_chunks"]), "chunks"),
             ("utterances lost", float(r["utterances_lost"]), "count")]
    for k in ("lost_samples", "underflows", "resyncs"):
        rows.append((f"playback {k}, outside the restart", float(r["audio_counters"][k]), "count"))
        rows.append((f"playback {k}, server restart window", float(r["audio_counters_restart"][k]), "count"))
    rows += [("server restart: input back after kill", rs.get("input_back", nan) - rs.get("kill", nan), "s"),
             ("camera outage (largest gap)", r.get("camera_outage_gap_ms") or nan, "ms"),
             ("fps (camera, whole run, outage excluded)", r["frames"]["fps"], "fps"),
             ("frame gap p99 (outage excluded)", r["frames"]["gap_p99_ms"], "ms"),
             ("frame gap max (outage excluded)", r["frames"]["gap_max_ms"], "ms"),
             ("frames repeated (daemon, whole run)", float(r["frames_repeated"]), "frames"),
             ("frames emitted (daemon, whole run)", float(r["frames_emitted"]), "frames"),
             ("daemon ERROR lines", float(len(r["errors"])), "lines")]
    rows += [(f"pass: {k} (1 = yes)", float(v), "bool") for k, v in r["pass"].items()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--server", choices=("pipewire", "pulse"), default="pipewire")
    ap.add_argument("--swap-every", type=float, default=300.0, help="seconds between avatar swaps")
    ap.add_argument("--cam-loss", type=float, default=20.0, help="seconds the camera stays lost")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    kind = "pulseaudio" if args.server == "pulse" else "pipewire"
    t_start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped early: still report
    r = run_soak(args.minutes * 60, kind, swap_every=args.swap_every, cam_loss_s=args.cam_loss)
    r["window_utc"] = [t_start, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())]
    report("soak_workday", table(r), extra=r, out=args.json)


if __name__ == "__main__":
    main()
