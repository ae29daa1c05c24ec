"""Peak resident memory of a 20-step propagation loop (inference), one implementation per process.

Usage: python benchmarks/propagation_step_memory.py {vsr_fast,reference,reference_compiled} N C_IN H W
Prints the growth of the peak RSS over the loop in MiB (VmHWM is reset after setup through
/proc/self/clear_refs, so set-up allocations do not count).
"""

import sys
from pathlib import Path

import torch

import vsr_fast
from vsr_fast import reference

# appended, not prepended: tests/ holds a conftest.py and test modules a benchmark session must not see first
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from _helpers import rss_kib  # noqa: E402  (also bench_models' import of it)

STEPS = 20


def main(impl, n, c_in, h, w):
    torch.manual_seed(0)
    trunk = reference.ResidualBlocksWithInputConv(c_in, 64, num_blocks=30).eval()
    weights, biases = trunk.trunk_parameters()
    lrs = torch.rand(STEPS, n, c_in - 64, h, w)
    flows = torch.randn(STEPS, n, h, w, 2) * 3

    def reference_step(lr, state, flow):
        return trunk(torch.cat([lr, reference.flow_warp(state, flow)], 1))

    step = {
        "vsr_fast": lambda lr, state, flow: vsr_fast.propagation_step(lr, None, state, flow, weights, biases),
        "reference": reference_step,
        "reference_compiled": torch.compile(reference_step),
    }[impl]
    with torch.no_grad():
        state = torch.zeros(n, 64, h, w)
        step(lrs[0], state, flows[0])  # warm-up: compilation, weight reordering, allocator
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = rss_kib("VmRSS")
        for i in range(STEPS):
            state = step(lrs[i], state, flows[i])
        peak = rss_kib("VmHWM")
    print(f"{(peak - base) / 1024:.1f}")


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:6]))
