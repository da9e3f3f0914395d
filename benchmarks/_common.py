"""Shared bits for the benchmarks: a results table on stdout and a JSON file."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def report(name: str, rows: list[tuple[str, float, str]], extra: dict | None = None, out: Path | None = None) -> Path:
    """rows: (metric, value, unit). Prints a table and writes JSON; returns the JSON path."""
    w = max(len(r[0]) for r in rows)
    print(f"{'metric':<{w}}  {'value':>12}  unit")
    for metric, value, unit in rows:
        print(f"{metric:<{w}}  {value:>12.3f}  {unit}")
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), "results": {r[0]: {"value": r[1], "unit": r[2]} for r in rows}}
    data.update(extra or {})
    out.write_text(json.dumps(data, indent=2))
    print(f"wrote {out}")
    return out
