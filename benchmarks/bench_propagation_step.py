"""propagation_step (warp + concat + 30-block trunk): vsr_fast vs the reference step (reference
flow_warp, concatenation, reference trunk module), eager and under torch.compile, fp32 on CPU. Also
the peak memory of a 20-step propagation loop, each implementation in its own process
(benchmarks/propagation_step_memory.py).

Ratios of the same run are printed at the end (benchmarks/conftest.py).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vsr_fast
from vsr_fast import reference

SHAPES = {"train64x112": (1, 67, 64, 112), "lr720p": (1, 67, 180, 320), "batch4": (4, 67, 64, 64)}
_compiled = {}


def compiled(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def setup_case(shape):
    torch.manual_seed(0)
    n, c_in, h, w = shape
    trunk = reference.ResidualBlocksWithInputConv(c_in, 64, num_blocks=30).eval()
    weights, biases = trunk.trunk_parameters()
    return trunk, weights, biases, torch.rand(n, c_in, h, w)


def reference_step(trunk, lr, state, flow):
    return trunk(torch.cat([lr, reference.flow_warp(state, flow)], 1))


@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
@pytest.mark.parametrize("impl", ["vsr_fast", "reference", "reference_compiled"])
def test_propagation_step(run_case, shape, impl):
    trunk, weights, biases, x = setup_case(SHAPES[shape])
    n, c_in, h, w = SHAPES[shape]
    lr = x[:, : c_in - 64].contiguous()
    state = torch.randn(n, 64, h, w)
    flow = torch.randn(n, h, w, 2) * 3
    if impl == "vsr_fast":

        def case():
            with torch.no_grad():
                vsr_fast.propagation_step(lr, None, state, flow, weights, biases)
    else:
        fn = reference_step if impl == "reference" else compiled(reference_step)

        def case():
            with torch.no_grad():
                fn(trunk, lr, state, flow)

    run_case(f"step30 fp32 {shape} {list(SHAPES[shape])} cpu", impl, case, torch.device("cpu"), rounds=5)


@pytest.mark.parametrize("impl", ["vsr_fast", "reference", "reference_compiled"])
def test_step_loop_peak_memory(record_value, impl):
    script = Path(__file__).with_name("propagation_step_memory.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    runs = []
    for _ in range(3):  # RSS depends on the allocator's reuse: take the median of three processes
        out = subprocess.run(
            [sys.executable, str(script), impl, "1", "67", "64", "112"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        runs.append(float(out.stdout.split()[-1]))
    record_value("20-step loop peak RSS growth, median of 3 (MiB) [1,67,64,112] cpu", impl, sorted(runs)[1])
