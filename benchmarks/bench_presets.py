"""What each sadtalker streaming preset costs, against the offline chain, on the fixture clips.

    .venv/bin/python benchmarks/bench_presets.py [--json PATH] [--also LOOKAHEAD:CHUNK ...] [--no-pixels]

The clips of ``../shared/fixtures`` (sadtalker_parity's 45 frames, sadtalker_long's 207 and
20) run through the engine's production streaming path (Windower → ``coefficient_window``)
with each preset, and through the offline chain (``clip_coefficients``), both with the
reference's recorded blink ratio and pose latents injected, on the fixtures' reduced-width
weights. The offline chain is checked against the reference's ``target_semantics`` first.
Per preset, in one run:

- latency: the audio after a frame's instant its window needs (``window_spec.after``), which
  the live path waits for before it can render the frame;
- identical: the fraction of frames whose 27-frame window equals the offline one (1e-4);
  ``exp identical``: the same for the expression rows alone (the mouth);
- the largest deviation of a window, of the driving keypoints, and of the generator's pixels
  (at the fixtures' generator frames, against the reference's predictions);
- pose lag: the designed delay of the shown head pose, and the lag that best aligns the
  streamed head path with the offline one on the 207-frame clip.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import report  # noqa: E402
from tests.sadtalker.official_weights import sadtalker_config  # noqa: E402
from tests.sadtalker.parity_build import fixture_stages  # noqa: E402
from vcam_talker.engines.sadtalker.engine import SadTalkerEngine  # noqa: E402
from vcam_talker.engines.sadtalker.presets import PRESETS, TimelineParams  # noqa: E402
from vcam_talker.engines.sadtalker.timeline import CoefficientTimeline, SourceCoeffs, clip_coefficients  # noqa: E402
from vcam_talker.stream.windows import ArrayAudio, Windower  # noqa: E402

SHARED = ROOT.parent / "shared" / "fixtures"
CLIPS = {
    "parity45": (SHARED / "sadtalker_parity" / "inputs.npz", SHARED / "sadtalker_parity" / "outputs.npz"),
    "clip_a": (SHARED / "sadtalker_long" / "clip_a" / "inputs.npz", SHARED / "sadtalker_long" / "clip_a" / "outputs.npz"),
    "clip_short": (SHARED / "sadtalker_long" / "clip_short" / "inputs.npz",
                   SHARED / "sadtalker_long" / "clip_short" / "outputs.npz"),
}
TOL = 1e-4


def load_clip(name: str) -> dict:
    i, o = (np.load(p) for p in CLIPS[name])
    return {
        "wav": (i["wav_int16"] / 32768).astype(np.float32),
        "source": SourceCoeffs.from_row(i["source_coeff_3dmm"][0], full=False),
        "style": int(i["pose_style"]),
        "ratio": i["blink_ratio"][:, 0],
        "z": torch.from_numpy(i["a2p_z"]),
        "target": o["target_semantics"],
        "gen_frames": [int(f) for f in i["generator_frames"]],
        "predictions": o["predictions"],
        "source_image": i["source_image"],
    }


def streamed_windows(stages, clip: dict, **st) -> tuple[np.ndarray, SadTalkerEngine]:
    """Every frame's window through the engine's streaming path, the file's end included."""
    engine = SadTalkerEngine(sadtalker_config(pose_style=clip["style"], **st), stages=stages)
    r, z = clip["ratio"], clip["z"]
    engine.timeline = CoefficientTimeline(
        stages.audio, engine.timeline.p, ratio=lambda f: float(r[f]) if f < len(r) else 0.0,
        latents=lambda k: z[k] if k < len(z) else torch.zeros(64))
    win = Windower(ArrayAudio(clip["wav"], 16000), engine.window_spec, 25)
    out = [engine.coefficient_window(win.window(k), clip["source"])[1] for k in range(len(clip["target"]))]
    return np.stack(out), engine


def best_lag(streamed: np.ndarray, offline: np.ndarray, max_lag: int = 40) -> int:
    """The shift (frames, positive = streamed later) that best aligns two T×6 head paths."""
    a, b = streamed - streamed.mean(0), offline - offline.mean(0)
    scores = {}
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b[: len(b) - lag]) if lag >= 0 else (a[:lag], b[-lag:])
        denom = np.sqrt((x * x).sum(0) * (y * y).sum(0)) + 1e-12
        scores[lag] = float(((x * y).sum(0) / denom).mean())
    return max(scores, key=scores.get)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--also", nargs="*", default=[], help="extra custom settings LOOKAHEAD:CHUNK")
    ap.add_argument("--no-pixels", action="store_true", help="skip the generator (slow on a CPU)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    stages = fixture_stages()
    clips = {n: load_clip(n) for n in CLIPS}
    offline = {}
    for name, clip in clips.items():
        res = clip_coefficients(stages.audio, clip["wav"], clip["source"], TimelineParams(style=clip["style"]),
                                ratio=clip["ratio"], latents=lambda k, z=clip["z"]: z[k])
        err = float(np.abs(res["windows"] - clip["target"]).max())
        assert err <= TOL, f"{name}: the offline chain is {err} off the reference"
        offline[name] = res
        print(f"offline chain vs reference, {name}: max |diff| {err:.2g}")
    with torch.inference_mode():
        enc = stages.source.encode(torch.from_numpy(clips["clip_a"]["source_image"]))
        kp_source = stages.motion(torch.from_numpy(clips["clip_a"]["source"].source_window())[None], enc["kp_canonical"])

    settings = [(n, {"preset": n}) for n in PRESETS]
    for s in args.also:
        la, chunk = (int(v) for v in s.split(":"))
        settings.append((f"custom {la}:{chunk}", {"preset": "custom", "lookahead_frames": la, "pose_chunk": chunk}))

    rows, table = [], {}
    for label, st in settings:
        t0 = time.perf_counter()
        frames = same = same_exp = 0
        win_dev = kp_dev = kp_mouth = px_max = px_mean = 0.0
        lag = None
        for name, clip in clips.items():
            got, engine = streamed_windows(stages, clip, **st)
            ref = offline[name]["windows"]
            d = np.abs(got - ref).reshape(len(ref), -1).max(1)
            de = np.abs(got[:, :64] - ref[:, :64]).reshape(len(ref), -1).max(1)
            frames += len(ref)
            same += int((d <= TOL).sum())
            same_exp += int((de <= TOL).sum())
            win_dev = max(win_dev, float(d.max()))
            with torch.inference_mode():
                kp_s = stages.motion(torch.from_numpy(got), enc["kp_canonical"])
                kp_o = stages.motion(torch.from_numpy(ref), enc["kp_canonical"])
                kp_dev = max(kp_dev, float((kp_s - kp_o).abs().max()))
                # the expression's share alone: the streamed windows with the offline head pose
                mixed = got.copy()
                mixed[:, 64:70] = ref[:, 64:70]
                kp_m = stages.motion(torch.from_numpy(mixed), enc["kp_canonical"])
                kp_mouth = max(kp_mouth, float((kp_m - kp_o).abs().max()))
                if not args.no_pixels:
                    gf = clip["gen_frames"]
                    pred = stages.frame(enc["feature_3d"], enc["compressed"], kp_source, kp_s[gf])
                    pd = np.abs(pred.numpy() - clip["predictions"])
                    px_max, px_mean = max(px_max, float(pd.max())), max(px_mean, float(pd.mean()))
            if name == "clip_a":
                lag = best_lag(got[:, 64:70, 13], ref[:, 64:70, 13])
        p = engine.timeline.p
        latency_ms = engine.window_spec.after / 16
        entry = {
            "lookahead_frames": p.lookahead, "pose_chunk": p.pose_chunk, "latency_ms": latency_ms,
            "identical": same / frames, "exp_identical": same_exp / frames, "frames": frames,
            "max_window_dev": win_dev, "max_keypoint_dev": kp_dev, "max_keypoint_dev_expression_only": kp_mouth,
            "max_pixel_dev": None if args.no_pixels else px_max, "mean_pixel_dev": None if args.no_pixels else px_mean,
            "pose_delay_frames": p.pose_delay, "pose_lag_measured_frames": lag,
            "seconds": time.perf_counter() - t0,
        }
        table[label] = entry
        rows += [(f"{label}: latency", latency_ms, "ms"), (f"{label}: identical", 100 * same / frames, "% frames"),
                 (f"{label}: exp identical", 100 * same_exp / frames, "% frames"),
                 (f"{label}: max keypoint dev", kp_dev, ""),
                 (f"{label}: max keypoint dev, expression only", kp_mouth, "")]
        if not args.no_pixels:
            rows.append((f"{label}: max pixel dev", px_max, "(0..1)"))
        rows.append((f"{label}: pose lag", float(lag), f"frames (designed {p.pose_delay})"))

    print()
    head = ("| preset | lookahead, chunk | latency | identical frames | identical expression rows | "
            "max keypoint dev (expression only) | max pixel dev | head pose lag |")
    print(head)
    print("|" + " --- |" * 8)
    for label, e in table.items():
        px = "–" if e["max_pixel_dev"] is None else f"{e['max_pixel_dev']:.3f} (mean {e['mean_pixel_dev']:.4f})"
        print(f"| {label} | {e['lookahead_frames']}, {e['pose_chunk']} | {e['latency_ms']:.0f} ms | "
              f"{100 * e['identical']:.0f} % | {100 * e['exp_identical']:.0f} % | {e['max_keypoint_dev']:.3g} "
              f"({e['max_keypoint_dev_expression_only']:.3g}) | {px} | "
              f"{e['pose_delay_frames']} frames designed, {e['pose_lag_measured_frames']} measured |")
    report("presets", rows, {"presets": table, "clips": {n: len(c["target"]) for n, c in clips.items()}}, args.json)


if __name__ == "__main__":
    main()
