#!/usr/bin/env bash
# The sadtalker GPU check (issue 20), on the lent machine as it is: its own python3 and torch;
# the other packages from device_wheels/ and the fixtures from shared/fixtures/, both put in
# the tree by scripts/prepare_device_tree.sh (git-ignored; they travel with the working tree).
#   benchmarks/gpu_check.sh core        # at most 4 min: test_compiled.py, the uncompiled 256² rows,
#                                       #   the precision deviations
#   benchmarks/gpu_check.sh extra       # at most 5 min: the compiled rows at 256², and 512²
#   benchmarks/gpu_check.sh --dry-run   # both, on the CPU at a tiny size (128²): the same steps and
#                                       #   table, the GPU rows "not measured"
# Time limits are the budgets set with timeout; neither run has been timed on a GPU yet.
# Results go to $OUT (default benchmarks/results/gpu_check/): logs, junit XML, JSON, table.
# One-line errors, each with its own exit code: "no torch" 3, "no CUDA" 2, "missing package X" 4,
# "missing fixtures" 5.
set -u
cd "$(dirname "$0")/.."
MODE=core DRY=0
for a in "$@"; do
  case $a in
    core|extra) MODE=$a ;;
    --dry-run) DRY=1 ;;
    *) echo "usage: benchmarks/gpu_check.sh [core|extra] [--dry-run]"; exit 64 ;;
  esac
done
PY=${PY:-python3}
OUT=${OUT:-benchmarks/results/gpu_check}
export OUT
mkdir -p "$OUT"

"$PY" -c 'import torch' 2>/dev/null || { echo "no torch: $PY cannot import torch"; exit 3; }
if [ "$DRY" = 0 ]; then
  "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "no CUDA: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device (--dry-run runs on the CPU)"; exit 2; }
fi

MODULES="numpy:numpy yaml:pyyaml soundfile:soundfile safetensors:safetensors PIL:pillow tqdm:tqdm pytest:pytest"
have_all() { "$PY" -c "import $(for m in $MODULES; do printf '%s,' "${m%%:*}"; done | sed 's/,$//')" 2>/dev/null; }
# the wheels that travel with the tree, installed beside it when a package is missing (pip if
# there is one, else unpacked)
SITE=$PWD/.device_site
if ! have_all && [ -d device_wheels ] && [ ! -e "$SITE/.done" ]; then
  rm -rf "$SITE"
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --find-links device_wheels --target "$SITE" \
      -r device_wheels/requirements.txt >"$OUT/pip.log" 2>&1 || { echo "pip failed: see $OUT/pip.log"; exit 4; }
  else
    "$PY" -c 'import sys, zipfile, glob
for w in glob.glob("device_wheels/*.whl"): zipfile.ZipFile(w).extractall(sys.argv[1])' "$SITE"
  fi
  touch "$SITE/.done"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$SITE" ] && PYTHONPATH="$PYTHONPATH:$SITE"
for mod in $MODULES; do
  "$PY" -c "import ${mod%%:*}" 2>/dev/null || { echo "missing package ${mod#*:} (run scripts/prepare_device_tree.sh before the tree travels)"; exit 4; }
done
[ -d shared/fixtures/sadtalker_parity ] || [ -d ../shared/fixtures/sadtalker_parity ] \
  || { echo "missing fixtures: no shared/fixtures in the tree (run scripts/prepare_device_tree.sh)"; exit 5; }

nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv > "$OUT/gpu.csv" 2>&1
rc=0
step() {  # name timeout command...: logged to $OUT/name.txt; a failure fails the check
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local r=${PIPESTATUS[0]}
  echo "== $name rc=$r"
  [ "$r" = 0 ] || rc=1
}
BENCH=(benchmarks/bench_sadtalker.py --batch 4)
if [ "$DRY" = 1 ]; then
  step test_compiled 400 "$PY" -m pytest -q -p no:cacheprovider -s tests/sadtalker/test_compiled.py \
    --junitxml="$OUT/test_compiled.xml"
  step bench_core 600 "$PY" "${BENCH[@]}" --sizes 128 --frames 1 --skip compile \
    --deviation-size 128 --deviation-frames 1 --json "$OUT/bench_core.json"
  step bench_extra 600 "$PY" "${BENCH[@]}" --sizes 128 --frames 1 --compile-cpu --only "128:compile" \
    --skip-deviations --json "$OUT/bench_extra.json"
elif [ "$MODE" = core ]; then
  step test_compiled 100 "$PY" -m pytest -q -p no:cacheprovider -s tests/sadtalker/test_compiled.py -k cuda \
    --junitxml="$OUT/test_compiled.xml"
  step bench_core 130 "$PY" "${BENCH[@]}" --sizes 256 --frames 48 --skip compile --json "$OUT/bench_core.json"
else
  step bench_extra 290 "$PY" "${BENCH[@]}" --sizes 256,512 --frames 48 \
    --only "256:compile,512:baseline,512:engine,512:float16,512:all" --skip-deviations --json "$OUT/bench_extra.json"
fi
"$PY" benchmarks/gpu_table.py "$OUT" | tee "$OUT/table.txt"
echo "gpu_check $([ "$DRY" = 1 ] && echo '--dry-run (core and extra)' || echo "$MODE") rc=$rc; results in $OUT"
exit $rc
