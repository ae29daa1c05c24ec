"""flow_warp: vsr_fast vs the reference (mmagic maths), eager and under torch.compile.

Forward and forward+backward, fp32, contiguous NCHW features, flows ~ N(0, 3^2) px, on the named VSR
shapes. Ratios of the same run are printed at the end (benchmarks/conftest.py).
"""

import pytest
import torch

import vsr_fast
from vsr_fast import reference

SHAPES = {
    "train64": (1, 64, 64, 64),
    "lr720p": (1, 64, 180, 320),
    "batch4": (4, 64, 64, 64),
    "rgb720p": (1, 3, 720, 1280),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

_compiled = {}


def implementation(name):
    if name == "vsr_fast":
        return vsr_fast.flow_warp
    if name == "reference":
        return reference.flow_warp
    base = {"vsr_fast_compiled": vsr_fast.flow_warp, "reference_compiled": reference.flow_warp}[name]
    if name not in _compiled:
        _compiled[name] = torch.compile(base, dynamic=False)
    return _compiled[name]


IMPLS = ["vsr_fast", "reference", "reference_compiled", "vsr_fast_compiled"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("passes", ["forward", "forward_backward"])
def test_flow_warp(run_case, device, shape, impl, passes):
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    n, c, h, w = SHAPES[shape]
    x = torch.rand(n, c, h, w, generator=g).to(device)
    flow = (torch.randn(n, h, w, 2, generator=g) * 3).to(device)
    fn = implementation(impl)
    if passes == "forward":

        def case():
            with torch.no_grad():
                fn(x, flow)
    else:
        x.requires_grad_(True)
        flow.requires_grad_(True)
        grad = torch.randn(n, c, h, w, generator=g).to(device)

        def case():
            x.grad = flow.grad = None
            fn(x, flow).backward(grad)

    # forward's least traffic: read x and flow once, write the output once
    moved = (
        2 * x.numel() * x.element_size() + flow.numel() * flow.element_size() if passes == "forward" else None
    )
    run_case(
        f"flow_warp {passes} {shape} {list(SHAPES[shape])} {device.type}",
        impl,
        case,
        device,
        bytes_moved=moved,
    )
