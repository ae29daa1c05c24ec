"""Small CUDA cases of every vsr_fast kernel, for compute-sanitizer (memcheck / racecheck).

Run as `python benchmarks/gpu_sanitizer_cases.py`; exits non-zero if a result is wrong, so that a
sanitizer run also checks the values it watched being computed.
"""
import itertools

import torch

import vsr_fast
from vsr_fast import reference


def flow_warp_cases():
    g = torch.Generator().manual_seed(0)
    for dtype, layout, (interp, pad, align) in itertools.product(
            [torch.float32, torch.float16, torch.bfloat16, torch.float64], ["nchw", "nhwc"],
            itertools.product(["bilinear", "nearest"], ["zeros", "border"], [True, False])):
        x = torch.rand(2, 5, 7, 9, generator=g).to("cuda", dtype)
        if layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
        flow = (torch.randn(2, 7, 9, 2, generator=g) * 3).cuda()
        flow = flow.to(dtype) if dtype in (torch.float32, torch.float64) else flow
        x.requires_grad_(True)
        flow.requires_grad_(True)
        out = vsr_fast.flow_warp(x, flow, interp, pad, align)
        out.backward(torch.ones_like(out))
        expected = reference.flow_warp(x.detach().double(), flow.detach().double(), interp, pad, align)
        tol = 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2
        torch.testing.assert_close(out.detach().double(), expected, atol=tol, rtol=0)
    torch.cuda.synchronize()


if __name__ == "__main__":
    flow_warp_cases()
    print("gpu_sanitizer_cases: all cases ran and matched the reference")
