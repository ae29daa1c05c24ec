"""Small CUDA cases of every vsr_fast kernel, for compute-sanitizer (memcheck / racecheck).

Run as `python benchmarks/gpu_sanitizer_cases.py`; exits non-zero if a result is wrong, so that a
sanitizer run also checks the values it watched being computed (with the tests' tolerance table).
"""

import itertools
import os
import sys
from pathlib import Path

import torch

import vsr_fast
from vsr_fast import reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _helpers import TOLERANCE, assert_lowp_close  # noqa: E402


def flow_warp_cases():
    g = torch.Generator().manual_seed(0)
    for dtype, layout, (interp, pad, align) in itertools.product(
        [torch.float32, torch.float16, torch.bfloat16, torch.float64],
        ["nchw", "nhwc"],
        itertools.product(["bilinear", "nearest"], ["zeros", "border"], [True, False]),
    ):
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
        if dtype in (torch.float32, torch.float64):
            tol = TOLERANCE["float32" if dtype == torch.float32 else "float64"]
            torch.testing.assert_close(out.detach().double(), expected, atol=tol, rtol=0)
        else:
            assert_lowp_close(
                out.detach(), reference.flow_warp(x.detach(), flow.detach(), interp, pad, align), expected
            )
    torch.cuda.synchronize()


def residual_trunk_cases():
    """Both CUDA paths of residual_trunk / propagation_step on tiny inputs (partial tiles on both
    axes, two images), each checked against the float64 reference."""
    g = torch.Generator().manual_seed(1)
    c = 64
    weights = [torch.randn(c, 3 + c, 3, 3, generator=g, dtype=torch.float64) / (9 * (3 + c)) ** 0.5]
    weights += [torch.randn(c, c, 3, 3, generator=g, dtype=torch.float64) / (9 * c) ** 0.5 for _ in range(2)]
    biases = [torch.randn(c, generator=g, dtype=torch.float64) * 0.1 for _ in weights]
    lr = torch.rand(2, 3, 19, 23, generator=g, dtype=torch.float64)
    state = torch.rand(2, c, 19, 23, generator=g, dtype=torch.float64)
    flow = torch.randn(2, 19, 23, 2, generator=g, dtype=torch.float64) * 2
    x = torch.cat([lr, reference.flow_warp(state, flow)], 1)
    expected = reference.residual_trunk(x, weights, biases)
    paths = [("library", torch.float32), ("library", torch.float16)]
    if torch.cuda.get_device_capability()[0] >= 8:
        paths += [("fused", torch.float16), ("fused", torch.bfloat16), ("auto", torch.float16)]
    saved = os.environ.get("VSR_FAST_TRUNK_IMPL")
    try:
        for impl, dtype in paths:
            os.environ["VSR_FAST_TRUNK_IMPL"] = impl
            w = [t.to("cuda", dtype) for t in weights]
            b = [t.to("cuda", dtype) for t in biases]
            fl = flow.cuda().float() if dtype != torch.float32 else flow.cuda().to(dtype)
            step = vsr_fast.propagation_step(lr.to("cuda", dtype), None, state.to("cuda", dtype), fl, w, b)
            trunk = vsr_fast.residual_trunk(
                x.to("cuda", dtype).contiguous(memory_format=torch.channels_last), w, b
            )
            for name, out in (("propagation_step", step), ("residual_trunk", trunk)):
                if dtype == torch.float32:
                    err = (out.double().cpu() - expected).abs().max().item()
                    assert err <= TOLERANCE["float32_chain"], f"{name} {impl} {dtype}: max error {err:.3g}"
                else:  # the reference run in the same dtype, on the same (rounded) inputs
                    own = (
                        reference.propagation_step(
                            lr.to("cuda", dtype), None, state.to("cuda", dtype), fl, w, b
                        )
                        if name == "propagation_step"
                        else reference.residual_trunk(x.to("cuda", dtype), w, b)
                    )
                    assert_lowp_close(out, own, expected)
    finally:
        if saved is None:
            os.environ.pop("VSR_FAST_TRUNK_IMPL", None)
        else:
            os.environ["VSR_FAST_TRUNK_IMPL"] = saved
    torch.cuda.synchronize()


def keyframe_fusion_cases():
    g = torch.Generator().manual_seed(2)
    state, refill = (torch.rand(2, 16, 9, 13, generator=g, dtype=torch.float64) for _ in range(2))
    weight = torch.randn(16, 32, 3, 3, generator=g, dtype=torch.float64) * 0.1
    bias = torch.randn(16, generator=g, dtype=torch.float64) * 0.1
    expected = reference.keyframe_fusion(state, refill, weight, bias)
    for layout in (torch.contiguous_format, torch.channels_last):
        args = [t.to("cuda", torch.float32) for t in (state, refill, weight, bias)]
        args[0], args[1] = (t.contiguous(memory_format=layout) for t in args[:2])
        out = vsr_fast.keyframe_fusion(*args)
        err = (out.double().cpu() - expected).abs().max().item()
        assert err <= TOLERANCE["float32_chain"], f"keyframe_fusion {layout}: max error {err:.3g}"
    torch.cuda.synchronize()


def modulated_deform_conv_cases():
    """Forward and all five gradients of both CUDA kernels (im2col, col2im) in every dtype and both
    layouts, EDVR's deform groups of 8 channels and a strided, dilated 2x3 kernel; offsets that reach
    outside the frame. The references run on CPU, out of the sanitizer's way."""
    g = torch.Generator().manual_seed(3)
    configs = [  # (N, C, H, W, C_out, kernel, stride, padding, dilation, deform_groups)
        (2, 16, 9, 11, 8, (3, 3), (1, 1), (1, 1), (1, 1), 2),
        (1, 8, 10, 12, 5, (2, 3), (2, 1), (1, 0), (1, 2), 2),
    ]
    for config, dtype, layout in itertools.product(
        configs,
        [torch.float32, torch.float16, torch.bfloat16, torch.float64],
        [torch.contiguous_format, torch.channels_last],
    ):
        n, c, h, w, c_out, (kh, kw), stride, padding, dilation, dg = config
        ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
        offset = torch.randn(n, 2 * dg * kh * kw, ho, wo, generator=g, dtype=torch.float64) * 3
        mask = torch.rand(n, dg * kh * kw, ho, wo, generator=g, dtype=torch.float64)
        weight = torch.randn(c_out, c, kh, kw, generator=g, dtype=torch.float64) / (c * kh * kw) ** 0.5
        bias = torch.randn(c_out, generator=g, dtype=torch.float64) * 0.1
        # float32 offsets and masks with reduced-precision x, holding dtype-representable values
        off_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        args = [x.to(dtype), offset.to(dtype).to(off_dtype), mask.to(dtype).to(off_dtype), weight.to(dtype)]
        args.append(bias.to(dtype))
        leaves = [
            t.cuda().clone(memory_format=layout if t.dim() == 4 else torch.preserve_format) for t in args
        ]
        leaves = [t.requires_grad_() for t in leaves]
        out = vsr_fast.modulated_deform_conv(*leaves, stride, padding, dilation, 1, dg)
        out.backward(torch.ones_like(out))
        torch.cuda.synchronize()
        dcn_args = (stride, padding, dilation, dg)
        expected = reference.modulated_deform_conv2d(*(t.double() for t in args), *dcn_args)
        if dtype in (torch.float32, torch.float64):
            tol = TOLERANCE[str(dtype).removeprefix("torch.")]
            err = (out.detach().double().cpu() - expected).abs().max().item()
            assert err <= tol, f"modulated_deform_conv {dtype} {layout}: max error {err:.3g}"
            truth = [t.to(torch.float64, copy=True).requires_grad_() for t in args]
            reference.modulated_deform_conv2d(*truth, *dcn_args).backward(torch.ones_like(expected))
            for name, a, b in zip(["x", "offset", "mask", "weight", "bias"], leaves, truth):
                err = (a.grad.double().cpu() - b.grad).abs().max().item()
                scale = b.grad.abs().max().item() or 1.0
                assert err <= tol * scale, f"modulated_deform_conv grad_{name} {dtype}: error {err:.3g}"
        else:
            own = reference.modulated_deform_conv2d(*(t.to(dtype) for t in args), *dcn_args)
            assert_lowp_close(out.detach(), own, expected)
            assert all(t.grad.isfinite().all() for t in leaves), f"modulated_deform_conv {dtype} gradients"


if __name__ == "__main__":
    flow_warp_cases()
    residual_trunk_cases()
    keyframe_fusion_cases()
    modulated_deform_conv_cases()
    print("gpu_sanitizer_cases: all cases ran and matched the reference")
