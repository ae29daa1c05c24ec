#!/usr/bin/env bash
# The test command: set up (scripts/setup.sh), the lint and format checks (ruff for Python,
# clang-format for C++ / CUDA; the versions setup.sh pins), then the whole test suite against the
# installed package. Extra arguments go to pytest. With VSR_FAST_CUDA=1 the suite also checks that the
# CUDA kernels really were compiled (tests/test_build.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VSR_FAST_VENV:-$HOME/.cache/vsr_fast/venv}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
find csrc \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print0 |
  xargs -0 "$VENV/bin/clang-format" --dry-run --Werror
echo "lint and format checks passed (ruff check, ruff format --check, clang-format)"
export VSR_FAST_EXPECT_CUDA=${VSR_FAST_CUDA:-}
# the venv's pytest script, not `python -m pytest`: the latter would put the source tree (which has
# no compiled vsr_fast._C) ahead of the installed package
exec "$VENV/bin/pytest" tests -q "$@"
