#!/usr/bin/env bash
# Builds vsr_fast from this checkout and installs it into the environment of $PYTHON (default
# python3), compiled against the torch already installed there (--no-build-isolation) and without
# touching its other packages (--no-deps). scripts/setup.sh and benchmarks/gpu_check.sh both install
# this way. VSR_FAST_CUDA, TORCH_CUDA_ARCH_LIST and MAX_JOBS (default 2) are setup.py's; extra
# arguments go to pip (default -q; gpu_check passes -v to keep the compiler's output).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ $# -eq 0 ]; then set -- -q; fi
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip --disable-pip-version-check install --no-build-isolation --no-deps "$@" .
# from / so that the installed package is imported, not this source tree (which has no compiled _C)
(cd / && "$PY" -c "import vsr_fast; print('vsr_fast installed:', vsr_fast.build_info())")
