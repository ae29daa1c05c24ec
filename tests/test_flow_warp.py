"""vsr_fast::flow_warp against the reference (mmagic maths), on CPU and, where present, CUDA."""

import itertools
import math
import textwrap

import pytest
import torch
from packaging.version import Version

import vsr_fast
from vsr_fast import reference
from vsr_fast.ops.flow_warp import INTERPOLATION, PADDING_MODE

from _helpers import (
    TOLERANCE,
    assert_close,
    assert_close_scaled,
    assert_fake_raises_like_real,
    assert_gradcheck,
    assert_lowp_close,
    assert_mixed_meta_refused,
    poisoned_allocations,
    run_python,
)

MODES = list(itertools.product(["bilinear", "nearest"], ["zeros", "border"], [True, False]))
SHAPES = [  # (N, C, H, W)
    (0, 3, 5, 7),
    (2, 0, 5, 7),
    (1, 1, 1, 1),
    (1, 3, 1, 9),
    (1, 3, 8, 1),
    (2, 3, 5, 7),
    (1, 64, 17, 23),
    (3, 1, 11, 4),
    (1, 64, 32, 48),
]


def make_inputs(shape, device, dtype=torch.float64, flow_dtype=None, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.rand(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    flow = (torch.randn(n, h, w, 2, generator=g, dtype=torch.float64) * scale).to(
        device=device, dtype=flow_dtype or dtype
    )
    return x, flow


def ref64(x, flow, *modes):
    return reference.flow_warp(x.double(), flow.double(), *modes)


def tolerance_of(dtype):
    return {torch.float64: "float64", torch.float32: "float32"}[dtype]


# the raw ops' integer modes
BILINEAR, NEAREST = INTERPOLATION["bilinear"], INTERPOLATION["nearest"]
ZEROS, BORDER = PADDING_MODE["zeros"], PADDING_MODE["border"]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("modes", MODES, ids=lambda m: "-".join(map(str, m)))
def test_float64_matches_reference(device, shape, modes):
    x, flow = make_inputs(shape, device)
    out = vsr_fast.flow_warp(x, flow, *modes)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, ref64(x, flow, *modes), atol=TOLERANCE["float64"], rtol=0)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 64, 17, 23), (1, 3, 45, 80), (1, 16, 60, 200)], ids=str)
@pytest.mark.parametrize("modes", MODES, ids=lambda m: "-".join(map(str, m)))
def test_float32_matches_float64_reference(device, shape, modes):
    x, flow = make_inputs(shape, device, torch.float32, scale=4.0, seed=1)
    out = vsr_fast.flow_warp(x, flow, *modes)
    torch.testing.assert_close(out.double(), ref64(x, flow, *modes), atol=TOLERANCE["float32"], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("flow_dtype", ["same", torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(1, 8, 9, 13), (1, 4, 30, 700)], ids=str)
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_half_precision_within_twice_the_reference_error(device, dtype, flow_dtype, shape, padding_mode):
    flow_dtype = dtype if flow_dtype == "same" else flow_dtype
    x, flow = make_inputs(shape, device, dtype, flow_dtype=flow_dtype, seed=2)
    out = vsr_fast.flow_warp(x, flow, "bilinear", padding_mode)
    assert out.dtype == dtype
    truth = ref64(x, flow, "bilinear", padding_mode)
    assert_lowp_close(out, reference.flow_warp(x, flow.to(dtype), "bilinear", padding_mode), truth)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_zero_flow_is_exact_identity(device, dtype, padding_mode, interpolation, channels_last):
    x, _ = make_inputs((2, 5, 13, 37), device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    flow = torch.zeros(2, 13, 37, 2, device=device, dtype=dtype)
    assert torch.equal(vsr_fast.flow_warp(x, flow, interpolation, padding_mode), x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_integer_flow_is_an_exact_shift(device, dtype):
    x, _ = make_inputs((1, 3, 9, 11), device, dtype)
    dx, dy = 3, -2
    flow = torch.zeros(1, 9, 11, 2, device=device, dtype=dtype)
    flow[..., 0], flow[..., 1] = dx, dy
    expected = torch.zeros_like(x)
    # out[i, j] = x[i + dy, j + dx] where that is inside the image
    expected[..., 2:, : 11 - dx] = x[..., : 9 + dy, dx:]
    assert torch.equal(vsr_fast.flow_warp(x, flow), expected)


def test_large_flows_leave_the_image(device):
    x, _ = make_inputs((1, 2, 6, 7), device, torch.float32)
    for value in (1e4, -1e4, 1e30, -1e30, 7.0):
        flow = torch.full((1, 6, 7, 2), value, device=device)
        assert torch.equal(vsr_fast.flow_warp(x, flow), torch.zeros_like(x)), value
        # border padding clips to the corner pixel the flow points at
        border = vsr_fast.flow_warp(x, flow, padding_mode="border")
        corner = x[..., -1, -1] if value > 0 else x[..., 0, 0]
        assert torch.equal(border, corner[..., None, None].expand_as(x)), value


# float32 takes the CPU's vectorised tap classification in the propagation mode, float64 the shared
# scalar maths: both must agree with the reference on the exact edge cases.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_positions_exactly_on_the_border(device, dtype, padding_mode, align_corners):
    h, w = 5, 6
    x, _ = make_inputs((1, 3, h, w), device, dtype)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    for tx, ty in [
        (-1.0, 0.0),
        (0.0, -1.0),
        (w - 1.0, h - 1.0),
        (float(w), 2.0),
        (2.0, float(h)),
        (-0.5, h - 0.5),
        (w - 0.5, -0.5),
        (-1.0, -1.0),
    ]:
        flow = torch.stack((tx - xs, ty - ys), -1)[None].to(device=device, dtype=dtype)
        out = vsr_fast.flow_warp(x, flow, "bilinear", padding_mode, align_corners)
        torch.testing.assert_close(
            out.double(),
            ref64(x, flow, "bilinear", padding_mode, align_corners),
            atol=TOLERANCE[tolerance_of(dtype)],
            rtol=0,
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 3e9, -0.0])
@pytest.mark.parametrize("modes", MODES, ids=lambda m: "-".join(map(str, m)))
def test_non_finite_flows_behave_like_the_reference(device, dtype, value, modes):
    """NaN/inf flows give what grid_sample gives (NaN for bilinear-zeros, clipped for border) and
    never disturb the other pixels."""
    x, flow = make_inputs((2, 3, 6, 9), device, dtype)
    flow[0, 1, 2, 0] = value
    flow[1, 4, 7, 1] = value
    flow[1, 0, 0] = value
    out = vsr_fast.flow_warp(x, flow, *modes)
    assert_close(out, ref64(x, flow, *modes), tolerance_of(dtype), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_channels_last_and_strided_views(device, dtype):
    """Inputs are views into NaN-filled buffers: any read outside the view shows up as NaN."""
    n, c, h, w = 2, 6, 9, 13
    x, flow = make_inputs((n, c, h, w), device, dtype)
    expected = vsr_fast.flow_warp(x, flow)

    big = torch.full((n, 2 * c, h + 3, 3 * w), math.nan, device=device, dtype=dtype)
    x_view = big[:, 1::2, 2 : 2 + h, 1 : 1 + 3 * w : 3]
    x_view.copy_(x)
    fbig = torch.full((n, h, w, 5), math.nan, device=device, dtype=dtype)
    flow_view = fbig[..., 1:4:2]
    flow_view.copy_(flow)
    assert not x_view.is_contiguous() and not flow_view.is_contiguous()
    assert torch.equal(vsr_fast.flow_warp(x_view, flow_view), expected)

    x_cl = x.contiguous(memory_format=torch.channels_last)
    out_cl = vsr_fast.flow_warp(x_cl, flow)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    # the layouts take different (equally exact) summation orders: each is held to the reference
    if dtype == torch.float16:
        assert_lowp_close(out_cl, reference.flow_warp(x, flow), ref64(x, flow))
    else:
        assert_close(out_cl, ref64(x, flow), tolerance_of(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_output_element_is_written(device, dtype, channels_last):
    """Every buffer the kernels allocate starts out NaN (poisoned_allocations): an output or gradient
    element they forget to write stays NaN. CUDA's grad_x (atomics) is not allowed in the
    deterministic mode the poisoning uses, so there only the flow gradient is checked; it is zeroed
    before its scatter anyway."""
    x, flow = make_inputs(
        (1, 64, 31, 45), device, dtype, flow_dtype=torch.float32 if dtype == torch.float16 else None
    )
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.ones_like(x)
    need_x = device.type == "cpu"
    with poisoned_allocations():
        out = vsr_fast.flow_warp(x, flow)
        grad_x, grad_flow = torch.ops.vsr_fast._flow_warp_backward(
            grad, x, flow, BILINEAR, ZEROS, True, [need_x, True]
        )
    assert not out.isnan().any()
    assert not grad_flow.isnan().any()
    assert not (need_x and grad_x.isnan().any())


@pytest.mark.parametrize("modes", MODES, ids=lambda m: "-".join(map(str, m)))
def test_gradients_match_the_reference(device, modes):
    x, flow = make_inputs((2, 5, 7, 10), device, seed=3)
    g = torch.randn_like(x)
    grads = []
    for fn in (vsr_fast.flow_warp, reference.flow_warp):
        xr, fr = x.clone().requires_grad_(), flow.clone().requires_grad_()
        fn(xr, fr, *modes).backward(g)
        grads.append((xr.grad, fr.grad))
    for fast, ref in zip(grads[0], grads[1]):
        assert_close_scaled(fast, ref, "float64")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gradients_in_lower_precision(device, dtype):
    """Gradients in float32 / float16 / bfloat16 (float32 flows) are held to the float64 reference's
    like outputs are: float32 by the table, half precision by the 2x rule against the reference's
    own gradients in that dtype (the rule's one-ulp floor scales with their magnitude)."""
    x, flow = make_inputs((1, 8, 12, 15), device, dtype, flow_dtype=torch.float32, seed=4)
    g = torch.randn(x.shape, dtype=torch.float64).to(device).to(dtype)

    def grads(fn, x, flow, g):
        xr, fr = x.clone().requires_grad_(), flow.clone().requires_grad_()
        fn(xr, fr).backward(g)
        return xr.grad, fr.grad

    fast = grads(vsr_fast.flow_warp, x, flow, g)
    truth = grads(reference.flow_warp, x.double(), flow.double(), g.double())
    assert fast[0].dtype == dtype and fast[1].dtype == torch.float32
    if dtype == torch.float32:
        for a, b in zip(fast, truth):
            assert_close_scaled(a, b, "float32")
        return
    own = grads(reference.flow_warp, x, flow, g)
    for a, b, t in zip(fast, own, truth):
        assert_lowp_close(a, b, t)


def _off_grid_flow(h, w, align_corners, seed):
    """Flows whose sampling positions keep >= 0.1 px from pixel grid lines and from the borders."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    # target positions: an integer cell inside [-1, size) plus a fraction in [0.1, 0.9]
    tx = (
        torch.randint(-1, w, (h, w), generator=g)
        + 0.1
        + 0.8 * torch.rand(h, w, generator=g, dtype=torch.float64)
    )
    ty = (
        torch.randint(-1, h, (h, w), generator=g)
        + 0.1
        + 0.8 * torch.rand(h, w, generator=g, dtype=torch.float64)
    )
    if align_corners:
        return torch.stack((tx - xs, ty - ys), -1)[None]
    # invert position = (pos + flow) * size / (size - 1) - 0.5
    return torch.stack(((tx + 0.5) * (w - 1) / w - xs, (ty + 0.5) * (h - 1) / h - ys), -1)[None]


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_gradcheck_float64(device, padding_mode, align_corners):
    h, w = 4, 5
    x = torch.rand(1, 3, h, w, dtype=torch.float64, device=device, requires_grad=True)
    flow = _off_grid_flow(h, w, align_corners, seed=5).to(device).requires_grad_()
    fn = lambda a, b: vsr_fast.flow_warp(a, b, "bilinear", padding_mode, align_corners)  # noqa: E731
    assert_gradcheck(fn, (x, flow))


def test_backward_respects_output_mask(device):
    x, flow = make_inputs((1, 3, 5, 6), device)
    g = torch.randn_like(x)
    modes = (BILINEAR, ZEROS, True)
    gx, gf = torch.ops.vsr_fast._flow_warp_backward(g, x, flow, *modes, [True, False])
    assert gx.shape == x.shape and gf.numel() == 0
    gx2, gf2 = torch.ops.vsr_fast._flow_warp_backward(g, x, flow, *modes, [False, True])
    assert gx2.numel() == 0 and gf2.shape == flow.shape
    both = torch.ops.vsr_fast._flow_warp_backward(g, x, flow, *modes, [True, True])
    assert torch.equal(both[0], gx) and torch.equal(both[1], gf2)
    # only flow needs a gradient: grad_x is never computed
    fr = flow.clone().requires_grad_()
    vsr_fast.flow_warp(x, fr).backward(g)
    assert torch.equal(fr.grad, gf2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_opcheck(device, dtype):
    x, flow = make_inputs(
        (2, 3, 5, 7),
        device,
        dtype,
        flow_dtype=torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype,
    )
    x.requires_grad_(dtype in (torch.float64, torch.float32))
    flow.requires_grad_(dtype in (torch.float64, torch.float32))
    for args in [
        (x, flow, BILINEAR, ZEROS, True),
        (x, flow, NEAREST, BORDER, False),
        (x.contiguous(memory_format=torch.channels_last), flow, BILINEAR, BORDER, True),
    ]:
        torch.library.opcheck(torch.ops.vsr_fast.flow_warp.default, args)
    g = torch.randn_like(x.detach())
    torch.library.opcheck(
        torch.ops.vsr_fast._flow_warp_backward.default,
        (g, x.detach(), flow.detach(), BILINEAR, ZEROS, True, [True, True]),
    )
    torch.library.opcheck(
        torch.ops.vsr_fast._flow_warp_backward.default,
        (g, x.detach(), flow.detach(), BILINEAR, BORDER, False, [False, True]),
    )


def test_torch_compile_forward_and_backward(device):
    def step(feat, flow):
        return vsr_fast.flow_warp(feat, flow).relu() * 2

    compiled = torch.compile(step, fullgraph=True)
    x, flow = make_inputs((1, 4, 9, 11), device, torch.float32, seed=6)
    xr, fr = x.clone().requires_grad_(), flow.clone().requires_grad_()
    out = compiled(xr, fr)
    torch.testing.assert_close(out, step(x, flow), atol=0, rtol=0)
    out.sum().backward()
    xe, fe = x.clone().requires_grad_(), flow.clone().requires_grad_()
    step(xe, fe).sum().backward()
    assert_close(xr.grad, xe.grad, "float32")
    assert_close_scaled(fr.grad, fe.grad, "float32")


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            lambda d: (torch.rand(3, 5, 7, device=d), torch.rand(1, 5, 7, 2, device=d)),
            r"expected x \[N, C, H, W\]",
        ),
        (
            lambda d: (torch.rand(1, 3, 5, 7, device=d), torch.rand(1, 5, 7, device=d)),
            r"expected flow \[N, H, W, 2\]",
        ),
        (lambda d: (torch.rand(1, 3, 5, 7, device=d), torch.rand(1, 5, 8, 2, device=d)), r"\[1, 5, 8, 2\]"),
        (lambda d: (torch.rand(1, 3, 5, 7, device=d), torch.rand(2, 5, 7, 2, device=d)), r"\[2, 5, 7, 2\]"),
        (lambda d: (torch.rand(1, 3, 5, 7, device=d), torch.rand(1, 6, 7, 2, device=d)), r"\[1, 6, 7, 2\]"),
        (lambda d: (torch.rand(1, 3, 5, 7, device=d), torch.rand(1, 5, 7, 3, device=d)), r"\[1, 5, 7, 3\]"),
        (
            lambda d: (
                torch.rand(1, 3, 5, 7, device=d),
                torch.rand(1, 5, 7, 2, device=d, dtype=torch.float64),
            ),
            "dtype",
        ),
        (
            lambda d: (
                torch.rand(1, 3, 5, 7, device=d, dtype=torch.float16),
                torch.rand(1, 5, 7, 2, device=d, dtype=torch.bfloat16),
            ),
            "dtype",
        ),
        (
            lambda d: (torch.ones(1, 3, 5, 7, device=d, dtype=torch.int32), torch.rand(1, 5, 7, 2, device=d)),
            "floating",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(device, bad, message):
    x, flow = bad(device)
    with pytest.raises(RuntimeError, match="vsr_fast::flow_warp") as info:
        vsr_fast.flow_warp(x, flow)
    info.match(message)
    # the fake kernel (torch.compile, the meta device) refuses the same inputs with the same words
    assert_fake_raises_like_real(vsr_fast.flow_warp, x, flow)


def test_mixed_meta_and_cpu_inputs_are_refused():
    """Regression: with one meta input the Meta key won and the fake kernel returned a CPU tensor of
    uninitialised memory; now the fake kernels check devices (and dtypes and shapes) as the real ones."""
    x, flow = make_inputs((1, 4, 8, 8), "cpu", torch.float32)
    assert_mixed_meta_refused("vsr_fast::flow_warp", vsr_fast.flow_warp, x, flow)
    grad = torch.randn_like(x)
    assert_mixed_meta_refused(
        "vsr_fast::_flow_warp_backward",
        lambda g, a, f: torch.ops.vsr_fast._flow_warp_backward(g, a, f, BILINEAR, ZEROS, True, [True, True]),
        grad,
        x,
        flow,
    )
    # the backward's own checks, fake against real
    assert_fake_raises_like_real(
        lambda g, a, f: torch.ops.vsr_fast._flow_warp_backward(g, a, f, BILINEAR, ZEROS, True, [True, True]),
        grad[:, :1],
        x,
        flow,
    )


def test_non_tensor_arguments_and_modes_name_the_op():
    """Regression: flow_warp(None, f) said "tensor does not have a device", align_corners="no" was True."""
    x, flow = make_inputs((1, 2, 3, 4), "cpu", torch.float32)
    with pytest.raises(TypeError, match=r"vsr_fast::flow_warp: x must be a tensor, got None"):
        vsr_fast.flow_warp(None, flow)
    with pytest.raises(TypeError, match=r"vsr_fast::flow_warp: flow must be a tensor, got list"):
        vsr_fast.flow_warp(x, [[0.0, 0.0]])
    for bad in ("no", 1, None):
        with pytest.raises(TypeError, match=r"vsr_fast::flow_warp: align_corners must be True or False"):
            vsr_fast.flow_warp(x, flow, align_corners=bad)


def test_bad_modes_raise_clear_errors(device):
    x, flow = make_inputs((1, 2, 3, 4), device, torch.float32)
    with pytest.raises(ValueError, match=r"vsr_fast::flow_warp: unknown interpolation 'bicubic'"):
        vsr_fast.flow_warp(x, flow, interpolation="bicubic")
    with pytest.raises(ValueError, match=r"unknown padding_mode 'reflection'"):
        vsr_fast.flow_warp(x, flow, padding_mode="reflection")
    with pytest.raises(RuntimeError, match=r"vsr_fast::flow_warp: interpolation must be"):
        torch.ops.vsr_fast.flow_warp(x, flow, 7, ZEROS, True)
    with pytest.raises(RuntimeError, match=r"vsr_fast::flow_warp: padding_mode must be"):
        torch.ops.vsr_fast.flow_warp(x, flow, BILINEAR, -1, True)
    with pytest.raises(RuntimeError, match=r"vsr_fast::_flow_warp_backward: expected grad_out"):
        torch.ops.vsr_fast._flow_warp_backward(x[:, :1], x, flow, BILINEAR, ZEROS, True, [True, True])


@pytest.mark.cuda
def test_cuda_device_mismatch_and_determinism():
    x, flow = make_inputs((1, 2, 3, 4), "cuda", torch.float32)
    with pytest.raises(RuntimeError, match=r"vsr_fast::flow_warp: x and flow must be on the same device"):
        vsr_fast.flow_warp(x, flow.cpu())
    xr = x.clone().requires_grad_()
    out = vsr_fast.flow_warp(xr, flow)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="vsr_fast::_flow_warp_backward"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    # grad_flow alone is deterministic (no atomics), so it stays allowed
    fr = flow.clone().requires_grad_()
    torch.use_deterministic_algorithms(True)
    try:
        vsr_fast.flow_warp(x, fr).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert fr.grad is not None


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_matches_cpu(dtype):
    """The two backends share the sampling maths: in float32 they agree within the table's float32
    tolerance, in float16 the CUDA result's error is at most 2x the CPU kernel's."""
    x, flow = make_inputs((2, 64, 33, 47), "cpu", dtype, flow_dtype=torch.float32)
    cuda, cpu = vsr_fast.flow_warp(x.cuda(), flow.cuda()).cpu(), vsr_fast.flow_warp(x, flow)
    if dtype == torch.float32:
        assert_close(cuda, cpu, "float32")
    else:
        assert_lowp_close(cuda, cpu, ref64(x, flow))


def test_build_info_reports_the_build():
    info = vsr_fast.build_info()
    release = ".".join(map(str, Version(info["torch_runtime"]).release[:3]))
    assert info["torch_compiled"] == release
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["cuda_version"] and info["cuda_archs"]


@pytest.mark.parametrize("shape", [(1, 16, 11, 13), (2, 24, 40, 64), (1, 9, 7, 8)], ids=str)
def test_channel_blocks_with_edges_nan_flows_and_inf_pixels(device, shape):
    """NCHW float32 with >= 8 channels takes the CPU's 8-channel band path: pixels near the edges,
    NaN flows and inf pixels (where discarded reads of edge pixels would leak) must come out as the
    reference's."""
    x, flow = make_inputs(shape, device, torch.float32, scale=4.0, seed=7)
    x[:, :, 0, 0] = math.inf  # what a throw-away read of the plane origin would pick up
    x[:, 3, -1, -1] = -math.inf
    flow[:, 2, 3] = math.nan
    for modes in [("bilinear", "zeros", True), ("bilinear", "border", True), ("bilinear", "zeros", False)]:
        out = vsr_fast.flow_warp(x, flow, *modes)
        assert_close(out, ref64(x, flow, *modes), "float32", equal_nan=True)


# ---- regressions of issue 8 -------------------------------------------------------------------------

# Run in a subprocess: the crash it guards against (SIGFPE) would otherwise kill pytest itself.
_BROADCAST_SCRIPT = textwrap.dedent(
    """
    import itertools, torch, vsr_fast
    from vsr_fast import reference

    # the reproducer of issue 8, as filed
    x = torch.randn(1, 1, 1, 2).expand(1, 1, 2, 2)
    out = vsr_fast.flow_warp(x, torch.zeros(1, 2, 2, 2))
    assert torch.equal(out, x), out
    g = torch.Generator().manual_seed(0)
    MODES = list(itertools.product(("bilinear", "nearest"), ("zeros", "border"), (True, False)))
    SUBSETS = [d for k in (1, 2, 3, 4) for d in itertools.combinations(range(4), k)]
    cases = 0
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        flow_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        atol = 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2
        for c in (1, 9, 16):  # fewer than one block of 8 channels, a partial one, whole ones
            base = torch.rand(2, c, 5, 7, generator=g, dtype=torch.float64)
            random_flow = (torch.randn(2, 5, 7, 2, generator=g, dtype=torch.float64) * 2).to(flow_dtype)
            for dims in SUBSETS:  # stride 0 along every subset of the dimensions
                narrowed = base
                for d in dims:
                    narrowed = narrowed.narrow(d, 0, 1)
                xs = narrowed.to(dtype).expand(base.shape)
                for modes in MODES:
                    for flow in (random_flow, torch.zeros_like(random_flow)):
                        out = vsr_fast.flow_warp(xs, flow, *modes)
                        ref = reference.flow_warp(xs.double(), flow.double(), *modes)
                        err = (out.double() - ref).abs().max().item()
                        assert err < atol, (dtype, c, dims, modes, err)
                        cases += 1
            # torch.broadcast_to of a lower-rank tensor (one row for every image and row)
            xs = torch.broadcast_to(base[0, :, :1, :].to(dtype), base.shape)
            err = (vsr_fast.flow_warp(xs, random_flow).double() - reference.flow_warp(
                xs.double(), random_flow.double())).abs().max().item()
            assert err < atol, (dtype, c, "broadcast_to", err)
    print("OK", cases)
    """
)


def test_x_with_zero_strides_never_crashes():
    """Regression: a float32 x broadcast along H (row stride 0) made the AVX2 band path divide by
    the row stride: SIGFPE, in every mode, even with zero flow. Here: the filed reproducer, then a
    stride of 0 along every subset of x's dimensions, every dtype and mode, few and many channels,
    each against the reference, in a subprocess so that a crash fails this test."""
    proc = run_python(_BROADCAST_SCRIPT)
    assert proc.returncode == 0 and "OK" in proc.stdout, (
        f"exit status {proc.returncode} (negative: killed by that signal)\n"
        f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    )


WIDE = (1 << 24) + 6  # past 2^24, where float32 no longer holds every integer


@pytest.mark.parametrize("axis", ["width", "height"])
@pytest.mark.parametrize("align_corners", [True, False], ids=["align_corners", "no_align_corners"])
def test_frames_wider_than_2_24_pixels(axis, align_corners):
    """Regression: for float32 frames wider (or taller) than 2^24 px, positions were formed as
    column index + flow in float, so odd columns at or past 2^24 read their neighbour (the AVX2 row
    taps: bilinear, zeros, align_corners=True, two or more rows) or lost the fraction (the generic
    path). Oracles that need no reference run over 16 M pixels: a flow of 0 gives x back (align_corners)
    and +0.5 the mean of the two neighbours; without align_corners the position
    pos * size / (size - 1) - 0.5 is formed exactly in float64 here."""
    padding = "zeros" if align_corners else "border"
    src = torch.arange(WIDE, dtype=torch.float64).remainder(1009).div(1009).float()  # distinct neighbours
    if axis == "width":
        x = src.view(1, 1, 1, WIDE).expand(1, 1, 2, WIDE).contiguous()
    else:
        x = src.view(1, 1, WIDE, 1).expand(1, 1, WIDE, 2).contiguous()
    src = src.double()
    tail = slice(WIDE - 64, WIDE)  # the columns (rows) past 2^24
    pos = torch.arange(WIDE - 64, WIDE, dtype=torch.float64)
    for shift in (0.0, 0.5):
        step = torch.zeros(2)
        step[0 if axis == "width" else 1] = shift
        flow = step.view(1, 1, 1, 2).expand(1, x.size(2), x.size(3), 2)
        out = vsr_fast.flow_warp(x, flow, "bilinear", padding, align_corners)
        line = (out[0, 0, 0] if axis == "width" else out[0, 0, :, 0])[tail].double()
        p = pos + shift
        if not align_corners:
            p = p * WIDE / (WIDE - 1) - 0.5
        if padding == "border":
            p = p.clamp(max=WIDE - 1)
        lo = p.floor().long()
        hi = (lo + 1).clamp(max=WIDE - 1)
        frac = p - p.floor()
        right = torch.where(lo + 1 < WIDE, src[hi], 0.0 if padding == "zeros" else src[-1])
        expect = src[lo] * (1 - frac) + right * frac
        torch.testing.assert_close(line, expect, atol=TOLERANCE["float32"], rtol=0, msg=f"{axis} +{shift}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_flow_gradient_at_non_finite_positions_is_grid_samples_zero(dtype, value):
    """Policy (docs/design.md, "flow_warp and non-finite flows"): at a NaN/inf sampling position
    (bilinear, zeros padding) the output is NaN, as grid_sample's, no tap is read, and both flow
    gradients there are 0 (they were NaN). grid_sample's own backward gives 0 along the non-finite
    axis and NaN along the other (an artefact of its NaN weights), so there the reference is not the
    oracle; every other pixel's gradients match it."""
    x, flow = make_inputs((2, 3, 6, 9), "cpu", dtype, seed=5)
    flow[0, 1, 2, 0] = value
    flow[1, 4, 7, 1] = value
    flow[1, 0, 0] = value
    g = torch.randn_like(x)
    grads = []
    for fn in (vsr_fast.flow_warp, reference.flow_warp):
        xr, fr = x.clone().requires_grad_(), flow.clone().requires_grad_()
        fn(xr, fr, "bilinear", "zeros", True).backward(g)
        grads.append((xr.grad, fr.grad))
    (gx, gf), (rgx, rgf) = grads
    bad = ~flow.isfinite().all(-1)
    assert torch.equal(gf[bad], torch.zeros_like(gf[bad])), gf[bad]
    assert not gf.isnan().any() and not gx.isnan().any()
    assert_close_scaled(gx, rgx, tolerance_of(dtype))
    assert_close_scaled(gf[~bad], rgf[~bad], tolerance_of(dtype))
