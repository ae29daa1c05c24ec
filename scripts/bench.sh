#!/usr/bin/env bash
# The main job, for now: set up, then benchmark vsr_fast's flow_warp against the reference (eager and
# torch.compile) on the default VSR shapes; ratios of the same run are printed at the end.
# Extra arguments go to pytest (e.g. -k lr720p).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VSR_FAST_VENV:-$HOME/.cache/vsr_fast/venv}
exec "$VENV/bin/pytest" benchmarks/ --benchmark-only -k flow_warp -q "$@"
