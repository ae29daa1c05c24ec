#!/usr/bin/env bash
# Everything a GPU machine can tell us, in one call of at most ten minutes (docs/design.md, "GPU
# verification"): install vsr_fast as scripts/setup.sh does (scripts/install.sh, against the torch
# installed there), the CUDA tests (every one carries the `cuda` marker), compute-sanitizer on small
# cases of every kernel, the CUDA benchmarks, and a short report in $OUT (./gpu-report/ when OUT is
# unset): report.md, bench.json, bench_models.json, bench_trunk.json and logs.tgz (every step's log).
# Needs Python >= 3.11 with torch, nvcc, ninja, pytest, pytest-benchmark; no network.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-report}
mkdir -p "$OUT"
REPORT=$OUT/report.md
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16} VSR_FAST_CUDA=1 VSR_FAST_PTXAS_VERBOSE=1
# -P: the source tree (the current directory, which has no compiled vsr_fast._C) must not shadow the
# installed package, as it would on sys.path[0] of `python -m pytest`.
PYTEST=("$PY" -P -m pytest -q -p no:cacheprovider)
status() { printf -- '- %s: %s\n' "$1" "$2" >>"$REPORT"; }
# Every step's timeout is cut to what is left of the script's budget, so the whole check ends within
# ten minutes whatever a step does; a step with no time left is reported as skipped.
BUDGET=${GPU_CHECK_BUDGET_S:-570}
run_step() {  # name, timeout seconds, log file, command...
  local name=$1 limit=$2 log=$3; shift 3
  local start=$SECONDS left=$((BUDGET - SECONDS))
  if (( left < limit )); then limit=$left; fi
  if (( limit < 10 )); then status "$name" "SKIPPED (time budget of ${BUDGET} s used up)"; return; fi
  if timeout "$limit" "$@" >"$log" 2>&1; then status "$name" "PASS ($((SECONDS - start)) s)"
  else status "$name" "FAIL rc=$? ($((SECONDS - start)) s, see $(basename "$log"))"; fi
}

{
  echo "# vsr_fast GPU check"
  echo
  echo "- date: $(date -u +%FT%TZ)"
  echo "- git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  $PY -c "import torch; print('- device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU'); print('- torch:', torch.__version__, 'cuda', torch.version.cuda)"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1)"
  echo
  echo "## Steps"
} >"$REPORT"

# -v: pip shows the compiler's output, ptxas's resource report (VSR_FAST_PTXAS_VERBOSE) included
PYTHON=$PY run_step install 300 "$OUT/build.log" bash scripts/install.sh -v
grep -E "registers|spill" "$OUT/build.log" | sort | uniq -c | sort -rn | head -20 >"$OUT/ptxas.txt"
run_step "cuda tests (pytest -m cuda)" 240 "$OUT/tests.log" "${PYTEST[@]}" tests -m cuda
SAN=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
run_step "compute-sanitizer memcheck" 180 "$OUT/memcheck.log" "$SAN" --tool memcheck --error-exitcode 3 "$PY" benchmarks/gpu_sanitizer_cases.py
run_step "compute-sanitizer racecheck" 180 "$OUT/racecheck.log" "$SAN" --tool racecheck --error-exitcode 3 "$PY" benchmarks/gpu_sanitizer_cases.py
VSR_FAST_BENCH_SUMMARY=$OUT/bench.json run_step "cuda benchmarks" 240 "$OUT/bench.log" \
  "${PYTEST[@]}" benchmarks --benchmark-only -k cuda --ignore=benchmarks/bench_residual_trunk.py \
  --ignore=benchmarks/bench_models.py
# whole models, 100 frames of 180x320 (issue 11): fp32 / bf16 / fp16 against the reference fp32 eager
VSR_FAST_BENCH_SUMMARY=$OUT/bench_models.json VSR_FAST_BENCH_MODEL_ROUNDS=3 \
  run_step "cuda whole-model benchmarks" 180 "$OUT/bench_models.log" \
  "${PYTEST[@]}" benchmarks/bench_models.py --benchmark-only -k cuda
# residual_trunk: auto / library / fused paths vs eager and torch.compile, with TFLOP/s (the CUDA
# tests above ran every path: tests/test_residual_trunk.py parametrises VSR_FAST_TRUNK_IMPL)
rm -f "$OUT/trunk_tflops.txt"
VSR_FAST_BENCH_SUMMARY=$OUT/bench_trunk.json VSR_FAST_TRUNK_TFLOPS=$OUT/trunk_tflops.txt \
  run_step "cuda trunk benchmarks" 240 "$OUT/bench_trunk.log" \
  "${PYTEST[@]}" benchmarks/bench_residual_trunk.py --benchmark-only -k cuda

{
  echo
  echo "## Test summary"
  tail -3 "$OUT/tests.log"
  echo
  echo "## Benchmark ratios (same run)"
  sed -n '/benchmark ratios/,$p' "$OUT/bench.log" | grep -E "ratios|: " | head -60
  echo
  echo "## Whole-model benchmark (same run)"
  sed -n '/benchmark ratios/,$p' "$OUT/bench_models.log" 2>/dev/null | grep -E "ratios|: " | head -20
  echo
  echo "## Trunk benchmark ratios (same run)"
  sed -n '/benchmark ratios/,$p' "$OUT/bench_trunk.log" 2>/dev/null | grep -E "ratios|: " | head -40
  echo
  echo "## Trunk TFLOP/s"
  cat "$OUT/trunk_tflops.txt" 2>/dev/null
  echo
  echo "## ptxas (registers / spills, counts)"
  cat "$OUT/ptxas.txt"
} >>"$REPORT"
# The device tool brings back at most 8 files from $OUT: keep the report and the three JSON summaries
# as they are and pack every log into one archive.
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.log ./*.txt 2>/dev/null)
cat "$REPORT"
