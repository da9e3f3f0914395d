#!/usr/bin/env bash
# Makes this working tree ready for the lent GPU machine (benchmarks/gpu_check.sh): that
# machine has python3 3.12 with torch (CUDA) and nothing else: no package index, no .venv, no
# ../shared, and only the working tree travels (at most 64 MiB). Run here, where PyPI answers:
#   scripts/prepare_device_tree.sh
# - device_wheels/: the other packages the check imports, as wheels for CPython 3.12
#   manylinux x86_64 (numpy, pyyaml, soundfile, safetensors, pillow, tqdm, pytest and their
#   dependencies; not opencv (50 MB) nor scipy (37 MB): the check needs neither);
# - shared/fixtures/: the fixture arrays the check reads, only the keys it reads.
# Both are git-ignored. Prints the sizes and fails when the tree would pass 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}                          # downloads with its pip, and writes the fixture subset with its numpy
SRC=${FIXTURES_SRC:-../shared/fixtures}
[ -d "$SRC" ] || { echo "no fixtures at $SRC (set FIXTURES_SRC)"; exit 1; }
rm -rf device_wheels shared/fixtures
mkdir -p device_wheels shared/fixtures
cat > device_wheels/requirements.txt <<'REQ'
numpy>=1.26,<3
pyyaml>=6.0,<7
soundfile>=0.12,<0.15
safetensors>=0.4,<0.9
pillow>=10,<14
tqdm>=4.66,<5
pytest>=8,<10
REQ
"$PY" -m pip download --quiet --dest device_wheels -r device_wheels/requirements.txt --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any
"$PY" - "$SRC" <<'PYEOF'
"""Copy the keys the GPU check reads (test_compiled.py, bench_sadtalker.py's deviations)."""
import shutil, sys
from pathlib import Path

import numpy as np

src, dst = Path(sys.argv[1]), Path("shared/fixtures")
keep = {
    "sadtalker_parity/inputs.npz": ["source_image"],
    "sadtalker_parity/outputs.npz": ["kp_source", "kp_driving"],
    "sadtalker/inputs.npz": ["source_image"],
    "sadtalker/outputs.npz": ["kp_source", "kp_driving"],
    "sadtalker_long/clip_a/inputs.npz": ["source_image", "generator_frames"],
    "sadtalker_long/clip_a/outputs.npz": ["kp_source", "kp_driving"],
    "sadtalker_long/clip_short/inputs.npz": ["source_image", "generator_frames"],
    "sadtalker_long/clip_short/outputs.npz": ["kp_source", "kp_driving"],
}
whole = ["sadtalker_parity/config.yaml", "sadtalker_parity/weights.safetensors", "sadtalker_parity/README.md",
         "sadtalker/config.yaml", "sadtalker/keys.json", "sadtalker/README.md", "sadtalker_long/README.md"]
for rel, keys in keep.items():
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    with np.load(src / rel) as z:
        np.savez_compressed(dst / rel, **{k: z[k] for k in keys})
for rel in whole:
    if (src / rel).exists():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst / rel)
(dst / "README.md").write_text("Subsets of ../shared/fixtures for benchmarks/gpu_check.sh, written by "
                               "scripts/prepare_device_tree.sh (only the keys the check reads).\n")
PYEOF
ls device_wheels
tree_kib=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
extra_kib=$(du -sk device_wheels shared/fixtures | awk '{s+=$1} END {print s}')
du -sh device_wheels shared/fixtures
total=$(( tree_kib + extra_kib ))
echo "tree ${tree_kib} KiB + wheels and fixtures ${extra_kib} KiB = $(( total / 1024 )) MiB (limit 64)"
[ "$total" -lt $(( 64 * 1024 )) ] || { echo "too big for the device tree"; exit 1; }
