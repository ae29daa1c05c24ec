#!/usr/bin/env bash
# Everything a GPU machine can tell us, in one call of at most ten minutes (DESIGN.md §8):
# build against the torch installed there, CUDA tests, compute-sanitizer on small cases of every
# kernel, CUDA benchmarks, and a short report in $OUT (./gpu-report/ when OUT is unset): report.md,
# bench.json, bench_trunk.json and logs.tgz (every step's log).
# Needs torch, nvcc, ninja, pytest, pytest-benchmark; no network.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-report}
mkdir -p "$OUT"
REPORT=$OUT/report.md
PY=${PYTHON:-python}
export MAX_JOBS=${MAX_JOBS:-16} VSR_FAST_CUDA=1 VSR_FAST_PTXAS_VERBOSE=1 PYTHONPATH=$PWD
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

run_step build 300 "$OUT/build.log" $PY setup.py build_ext --inplace
$PY -c "import vsr_fast; print(vsr_fast.build_info())" >>"$OUT/build.log" 2>&1
grep -E "registers|spill" "$OUT/build.log" | sort | uniq -c | sort -rn | head -20 >"$OUT/ptxas.txt"
run_step "cuda tests (pytest -k cuda)" 240 "$OUT/tests.log" $PY -m pytest tests -q -k cuda -p no:cacheprovider
SAN=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
run_step "compute-sanitizer memcheck" 180 "$OUT/memcheck.log" "$SAN" --tool memcheck --error-exitcode 3 $PY benchmarks/gpu_sanitizer_cases.py
run_step "compute-sanitizer racecheck" 180 "$OUT/racecheck.log" "$SAN" --tool racecheck --error-exitcode 3 $PY benchmarks/gpu_sanitizer_cases.py
VSR_FAST_BENCH_SUMMARY=$OUT/bench.json run_step "cuda benchmarks" 240 "$OUT/bench.log" \
  $PY -m pytest benchmarks -q --benchmark-only -k "cuda and not trunk" -p no:cacheprovider
# residual_trunk: auto / library / fused paths vs eager and torch.compile (the CUDA tests above ran
# both paths through tests/test_residual_trunk_cuda.py, which parametrises VSR_FAST_TRUNK_IMPL)
rm -f "$OUT/trunk_tflops.txt"
VSR_FAST_BENCH_SUMMARY=$OUT/bench_trunk.json VSR_FAST_TRUNK_TFLOPS=$OUT/trunk_tflops.txt \
  run_step "cuda trunk benchmarks" 240 "$OUT/bench_trunk.log" \
  $PY -m pytest benchmarks/bench_trunk_cuda.py -q --benchmark-only -p no:cacheprovider

{
  echo
  echo "## Test summary"
  tail -3 "$OUT/tests.log"
  echo
  echo "## Benchmark ratios (same run)"
  sed -n '/benchmark ratios/,$p' "$OUT/bench.log" | grep -E "ratios|: " | head -60
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
# The device tool brings back at most 8 files from $OUT: keep the report and the two JSON summaries
# as they are and pack every log into one archive.
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.log ./*.txt 2>/dev/null)
cat "$REPORT"
