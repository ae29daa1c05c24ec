#!/usr/bin/env bash
# The test command: set up (scripts/setup.sh), then the whole test suite against the installed package.
# Extra arguments go to pytest. With VSR_FAST_CUDA=1 the suite also checks that the CUDA kernels
# really were compiled (tests/test_build.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VSR_FAST_VENV:-$HOME/.cache/vsr_fast/venv}
export VSR_FAST_EXPECT_CUDA=${VSR_FAST_CUDA:-}
# the venv's pytest script, not `python -m pytest`: the latter would put the source tree (which has
# no compiled vsr_fast._C) ahead of the installed package
exec "$VENV/bin/pytest" tests -q "$@"
