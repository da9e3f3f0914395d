"""The GPU check's table (benchmarks/gpu_check.sh): every row of its bench runs in $OUT, and
issue 20's targets against them ("not measured" off a GPU).

    python benchmarks/gpu_table.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NOT_RUN = "not measured"


def load(out: Path) -> tuple[dict, dict]:
    rows, meta = {}, {}
    for name in ("bench_core.json", "bench_extra.json"):
        p = out / name
        if not p.exists():
            continue
        doc = json.loads(p.read_text())
        meta = meta or doc
        for k, v in doc["results"].items():
            # a row measured in one run wins over "not measured in this run" from the other
            if k not in rows or (isinstance(rows[k], str) and (isinstance(v, dict) or rows[k].startswith(NOT_RUN))):
                rows[k] = v
    return rows, meta


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/gpu_check")
    rows, meta = load(out)
    if not rows:
        print(f"no bench results in {out}")
        return
    cuda = meta.get("device", "cpu").startswith("cuda")
    print(f"\nGPU check table: device {meta.get('device')}{' ' + meta['gpu'] if meta.get('gpu') else ''}, torch {meta.get('torch')}, "
          f"{meta.get('threads')} CPU threads")
    print(f"{'row':<58} {'fps':>8} {'ms/frame':>9}")
    for k, v in rows.items():
        if isinstance(v, dict):
            print(f"{k:<58} {v['fps']:>8.2f} {v['ms/frame']:>9.1f}")
        else:
            print(f"{k:<58} {v}")

    def fps(key: str):
        v = next((v for k, v in rows.items() if k.startswith(key) and isinstance(v, dict)), None)
        return v["fps"] if v else None

    half = "float16" if cuda else "bfloat16"
    dev = [v for k, v in rows.items() if k.startswith("deviation") and k.endswith(half) and "/" in str(v)]
    mean = max((float(str(v).split("/")[1]) for v in dev), default=None)
    checks = [
        ("256² 'all' fps >= 150", fps("256 all"), 150.0),
        ("512² 'all' fps >= 40", fps("512 all"), 40.0),
        ("256² 'all' / baseline >= 4x", (fps("256 all") / fps("256 baseline")) if fps("256 all") and fps("256 baseline") else None, 4.0),
    ]
    print("\nissue 20 targets (one H100/H200, 256², one stream):")
    for name, val, goal in checks:
        if not cuda or val is None:
            print(f"  {name:<44} not measured{'' if cuda else ' (no GPU)'}")
        else:
            print(f"  {name:<44} {val:.2f}: {'met' if val >= goal else 'NOT met'}")
    if not cuda or mean is None:
        print(f"  {half + ' mean deviation < 1/255 (1 level)':<44} not measured{'' if cuda else ' (no GPU)'}"
              + (f"; {half} on this CPU: worst mean {mean:.3f}" if mean is not None else ""))
    else:
        print(f"  {half + ' mean deviation < 1/255 (1 level)':<44} worst mean {mean:.3f}: {'met' if mean < 1.0 else 'NOT met'}")
    print(f"  {'first frame <= 400 ms after speech':<44} not measured (needs a running daemon)")


if __name__ == "__main__":
    main()
