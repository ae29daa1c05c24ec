"""keyframe_fusion (IconVSR's refill fusion, conv3x3 over cat[state, refill]): vsr_fast (no
concatenation) vs the reference (vsr_fast.reference.keyframe_fusion: torch.cat + conv2d), eager and
under torch.compile, fp32, 64 + 64 -> 64 channels as in IconVSR, CPU and (where present) CUDA.

Ratios of the same run are printed at the end (benchmarks/conftest.py).
"""

import pytest
import torch

import vsr_fast
from vsr_fast import reference

SHAPES = {"train64x112": (1, 64, 64, 112), "lr720p": (1, 64, 180, 320)}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLS = {"vsr_fast": vsr_fast.keyframe_fusion, "reference": reference.keyframe_fusion}
_compiled = {}


def implementation(name):
    if name in IMPLS:
        return IMPLS[name]
    if name not in _compiled:
        _compiled[name] = torch.compile(reference.keyframe_fusion, dynamic=False)
    return _compiled[name]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
@pytest.mark.parametrize("impl", ["vsr_fast", "reference", "reference_compiled"])
def test_keyframe_fusion(run_case, device, shape, impl):
    n, c, h, w = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    state, refill = (torch.rand(n, c, h, w, generator=g).to(device) for _ in range(2))
    weight = (torch.randn(c, 2 * c, 3, 3, generator=g) * (18 * c) ** -0.5).to(device)
    bias = (torch.randn(c, generator=g) * 0.01).to(device)
    fn = implementation(impl)

    def case():
        with torch.no_grad():
            fn(state, refill, weight, bias)

    run_case(f"keyframe_fusion fp32 {shape} {list(SHAPES[shape])} {device}", impl, case, torch.device(device))
