#!/usr/bin/env bash
# Issue 10's GPU checks in one command (estimated 5-7 minutes on an H200, not yet run; budget 8):
#   benchmarks/gpu_check.sh          # from the repository root, with .venv holding CUDA torch
# 1. tests/sadtalker/test_compiled.py: compiled and CUDA-graph generator == eager (1e-4);
# 2. benchmarks/bench_sadtalker.py at 256² and 512²: baseline, each switch, all together,
#    per-stage times, fps, and the float16/bfloat16 deviations on the fixtures.
# Results go to $OUT (default benchmarks/results/gpu_check/): pytest's log and junit XML,
# bench_sadtalker.json and its printed table.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/gpu_check}
export OUT
mkdir -p "$OUT"
"$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "no CUDA device: nothing to check here"; exit 2; }
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv > "$OUT/gpu.csv" 2>&1
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -s tests/sadtalker/test_compiled.py \
  --junitxml="$OUT/test_compiled.xml" 2>&1 | tee "$OUT/test_compiled.log"
tests=${PIPESTATUS[0]}
# every row at 256²; at 512² the ones that decide the size advice (compiles cost ~1 min each)
timeout 420 "$PY" benchmarks/bench_sadtalker.py --sizes 256,512 --frames 24 --batch 4 \
  --only "256:,512:baseline,512:engine,512:batch,512:float16,512:all" \
  --json "$OUT/bench_sadtalker.json" 2>&1 | tee "$OUT/bench_sadtalker.txt"
bench=${PIPESTATUS[0]}
echo "test_compiled rc=$tests bench rc=$bench; results in $OUT"
exit $(( tests != 0 || bench != 0 ))
