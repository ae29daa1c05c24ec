"""Peak resident memory of upscaling a generated clip, one run per process (test_inference.py).

Usage: python tests/_engine_memory.py {engine,full} T
Prints the growth of the peak RSS in MiB over the run (VmHWM is reset after set-up through
/proc/self/clear_refs). The clip is generated frame by frame, so the engine never holds it whole
(it spills it), while the full model needs it as one tensor, as a user of the model would.
"""

import sys
import warnings

import torch

import vsr_fast

from _helpers import rss_kib  # tests/ is sys.path[0]: this script runs from there

SIZE = 32  # HR 128x128: the x4 tail, the costliest part here, stays cheap
# enough for the segment's states and those in flight, far less than a clip's worth
SEGMENT_STATES = 8


def frames(t):
    g = torch.Generator().manual_seed(0)
    for _ in range(t):
        yield torch.rand(3, SIZE, SIZE, generator=g)


def main(mode, t):
    warnings.simplefilter("ignore", UserWarning)  # frames below 64x64 would warn
    torch.manual_seed(0)
    model = vsr_fast.BasicVSR(mid_channels=16, num_blocks=2).eval()
    state_bytes = 16 * SIZE * SIZE * 4 + 2 * SIZE * SIZE * 4
    with torch.no_grad():
        model(torch.rand(1, 2, 3, SIZE, SIZE))  # warm-up: weight packing, allocator, thread pool
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = rss_kib("VmRSS")
        checksum = 0.0
        if mode == "engine":
            for hr in vsr_fast.upscale(model, frames(t), max_memory=SEGMENT_STATES * state_bytes):
                checksum += float(hr[0, 0, 0])
        else:
            clip = torch.stack(list(frames(t)))
            for hr in model(clip[None])[0]:
                checksum += float(hr[0, 0, 0])
        peak = rss_kib("VmHWM")
    print(f"checksum {checksum:.6f} growth_mib {(peak - base) / 1024:.1f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
