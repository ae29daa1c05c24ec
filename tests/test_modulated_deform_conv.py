"""vsr_fast::modulated_deform_conv (DCNv2) against the reference DCN, on CPU and, where present, CUDA."""

import math

import pytest
import torch
import torch.nn.functional as F

import vsr_fast
from vsr_fast import reference

from _helpers import (
    assert_close,
    assert_close_scaled,
    assert_gradcheck,
    assert_lowp_close,
    poisoned_allocations,
)

# (N, C, H, W, C_out, (kh, kw), stride, padding, dilation, deform_groups)
CONFIGS = {
    "edvr": (1, 16, 9, 11, 8, (3, 3), 1, 1, 1, 2),  # 8 channels per deform group, as EDVR
    "edvr_groups8": (2, 64, 7, 10, 16, (3, 3), 1, 1, 1, 8),
    "group_of_3": (1, 12, 7, 9, 5, (3, 3), 1, 1, 1, 4),
    "one_group": (2, 12, 6, 5, 4, (3, 3), 1, 1, 1, 1),
    "stride2": (1, 8, 12, 13, 5, (3, 3), 2, 1, 1, 2),
    "dilation2": (1, 6, 9, 9, 4, (3, 3), 1, 2, 2, 3),
    "kernel1": (2, 4, 5, 7, 3, (1, 1), 1, 0, 1, 1),
    "kernel2x3": (1, 4, 6, 8, 3, (2, 3), (1, 2), (0, 1), (2, 1), 2),
    "pixel": (1, 3, 1, 1, 2, (3, 3), 1, 1, 1, 1),
    "row": (1, 8, 1, 9, 3, (3, 3), 1, 1, 1, 1),
}


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def out_size(config):
    n, c, h, w, c_out, (kh, kw), stride, padding, dilation, dg = config
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def make_inputs(config, device, dtype=torch.float64, offset_dtype=None, scale=2.0, seed=0, bias=True):
    """x ~ U(0, 1), weights at their fan-in scale (outputs of magnitude ~1), offsets ~ N(0, scale^2)."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w, c_out, (kh, kw), stride, padding, dilation, dg = config
    ho, wo = out_size(config)
    k = kh * kw

    def make(*shape, fn=torch.rand):
        return fn(*shape, generator=g, dtype=torch.float64)

    x = make(n, c, h, w)
    weight = (make(c_out, c, kh, kw) * 2 - 1) / math.sqrt(max(1, c * k))
    b = make(c_out) - 0.5 if bias else None
    offset = make(n, 2 * dg * k, ho, wo, fn=torch.randn) * scale
    mask = make(n, dg * k, ho, wo)
    to = dict(device=device, dtype=dtype)
    off_to = dict(device=device, dtype=offset_dtype or dtype)
    return (
        x.to(**to),
        offset.to(**off_to),
        mask.to(**off_to),
        weight.to(**to),
        None if b is None else b.to(**to),
    )


def conv_args(config):
    return tuple(_pair(v) for v in config[6:9]) + (config[9],)


def fast(x, offset, mask, weight, bias, config):
    stride, padding, dilation, dg = conv_args(config)
    return vsr_fast.modulated_deform_conv(x, offset, mask, weight, bias, stride, padding, dilation, 1, dg)


def ref(x, offset, mask, weight, bias, config):
    stride, padding, dilation, dg = conv_args(config)
    return reference.modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation, dg)


def ref64(x, offset, mask, weight, bias, config):
    return ref(
        x.double(),
        offset.double(),
        mask.double(),
        weight.double(),
        None if bias is None else bias.double(),
        config,
    )


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("bias", [True, False])
def test_float64_matches_reference(device, name, bias):
    config = CONFIGS[name]
    args = make_inputs(config, device, bias=bias)
    out = fast(*args, config)
    assert out.shape == (config[0], config[4], *out_size(config)) and out.dtype == torch.float64
    assert_close(out, ref64(*args, config), "float64")


# [1, 64, 37, 100] float32 spans three row chunks of the CPU column buffer (the last one partial)
@pytest.mark.parametrize("name", ["edvr", "edvr_groups8", "stride2", "kernel2x3", "chunks"])
def test_float32_matches_float64_reference(device, name):
    config = CONFIGS.get(name, (1, 64, 37, 100, 16, (3, 3), 1, 1, 1, 8))
    args = make_inputs(config, device, torch.float32, scale=3.0, seed=1)
    assert_close(fast(*args, config), ref64(*args, config), "float32")


def test_zero_offsets_and_unit_mask_are_conv2d(device):
    """An oracle independent of the reference's sampling: DCN with no deformation is F.conv2d."""
    for name in ["edvr", "stride2", "dilation2", "kernel1", "kernel2x3", "pixel"]:
        config = CONFIGS[name]
        x, offset, mask, weight, bias = make_inputs(config, device)
        stride, padding, dilation, _ = conv_args(config)
        out = fast(x, torch.zeros_like(offset), torch.ones_like(mask), weight, bias, config)
        assert_close(out, F.conv2d(x, weight, bias, stride, padding, dilation), "float64", msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("offset_dtype", ["same", torch.float32], ids=str)
@pytest.mark.parametrize("name", ["edvr", "group_of_3", "wide"])
def test_half_precision_within_twice_the_reference_error(device, dtype, offset_dtype, name):
    config = CONFIGS.get(name, (1, 16, 5, 180, 8, (3, 3), 1, 1, 1, 2))
    offset_dtype = dtype if offset_dtype == "same" else offset_dtype
    x, offset, mask, weight, bias = make_inputs(config, device, dtype, offset_dtype, seed=2)
    out = fast(x, offset, mask, weight, bias, config)
    assert out.dtype == dtype
    truth = ref64(x, offset, mask, weight, bias, config)
    # the reference in the low dtype, on the same (low-dtype representable) inputs
    ref_lowp = ref(x, offset.to(dtype), mask.to(dtype), weight, bias, config)
    assert_lowp_close(out, ref_lowp, truth)


def test_offsets_far_outside_the_frame_give_the_bias(device):
    config = CONFIGS["edvr"]
    x, offset, mask, weight, bias = make_inputs(config, device)
    expected = bias.view(1, -1, 1, 1).expand(config[0], -1, *out_size(config))
    for value in (1e4, -1e4, 1e30, -1e30, 12.0, -11.0, 2.0**23, -(2.0**23)):
        out = fast(x, torch.full_like(offset, value), mask, weight, bias, config)
        assert torch.equal(out, expected), value
    # mixed: some taps far away, some near the border, some inside
    offset[:, ::3] = 1e6
    offset[:, 1::5] = -10.5
    assert_close(
        fast(x, offset, mask, weight, bias, config), ref64(x, offset, mask, weight, bias, config), "float64"
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_positions_exactly_on_grid_lines_and_borders(device, dtype):
    """Sampling points on integer positions, on -1 / H / W exactly and half a pixel outside."""
    config = CONFIGS["edvr"]
    x, offset, mask, weight, bias = make_inputs(config, device, dtype)
    values = torch.tensor([0.0, 1.0, -1.0, -2.0, 0.5, -0.5, 9.0, 10.0, 11.0, -1.5, 10.5], dtype=dtype)
    idx = torch.randint(0, len(values), offset.shape, generator=torch.Generator().manual_seed(3))
    offset = values[idx].to(device)
    assert_close(
        fast(x, offset, mask, weight, bias, config),
        ref64(x, offset, mask, weight, bias, config),
        str(dtype).removeprefix("torch."),
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_offsets_and_masks_give_nan_at_their_pixels(device, value):
    """A NaN/inf offset (or a NaN mask) makes its sample NaN, so exactly its output pixel (all
    channels) is NaN, as in the reference; every other pixel is unaffected."""
    config = CONFIGS["edvr_groups8"]
    x, offset, mask, weight, bias = make_inputs(config, device)
    offset[0, 5, 2, 3] = value  # group 0, tap 2, x displacement
    offset[1, 2 * 9 * 7 + 0, 6, 9] = value  # group 7, tap 0, y displacement, bottom-right pixel
    mask[1, 30, 0, 0] = math.nan
    out = fast(x, offset, mask, weight, bias, config)
    expected = ref64(x, offset, mask, weight, bias, config)
    nan_pixels = torch.zeros(out.shape[0], *out.shape[2:], dtype=torch.bool)
    nan_pixels[0, 2, 3] = nan_pixels[1, 6, 9] = nan_pixels[1, 0, 0] = True
    assert torch.equal(out.isnan().cpu(), nan_pixels[:, None].expand(out.shape))
    assert_close(out, expected, "float64", equal_nan=True)
    # gradients (finite mask): NaN for the NaN samples' offsets only, and x's gradient stays finite
    # (no corner of a NaN sample is scattered into; the reference's clamped gather differs here)
    mask[1, 30, 0, 0] = 0.5
    x.requires_grad_()
    offset.requires_grad_()
    fast(x, offset, mask, weight, bias, config).backward(torch.ones_like(out))
    assert x.grad.isfinite().all()
    nan_offsets = offset.grad.isnan()
    assert nan_offsets[0, 4:6, 2, 3].all() and nan_offsets[1, 2 * 9 * 7 : 2 * 9 * 7 + 2, 6, 9].all()
    assert nan_offsets.sum() == 4


def test_channels_last_and_strided_views(device):
    """Inputs are views into NaN-filled buffers: any read outside the view shows up as NaN. Outputs and
    gradients of every layout are held to the reference's float64 results."""
    config = CONFIGS["edvr"]
    x, offset, mask, weight, bias = make_inputs(config, device)
    expected = ref64(x, offset, mask, weight, bias, config)

    def view_of(t):
        big = torch.full(
            (t.shape[0], 2 * t.shape[1], t.shape[2] + 3, 2 * t.shape[3]),
            math.nan,
            device=device,
            dtype=t.dtype,
        )
        v = big[:, 1::2, 2 : 2 + t.shape[2], 1::2]
        v.copy_(t)
        return v

    views = [view_of(t) for t in (x, offset, mask)]
    assert not any(v.is_contiguous() for v in views)
    assert_close(fast(*views, weight, bias, config), expected, "float64")

    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x, offset, mask)]
    out_cl = fast(*cl, weight, bias, config)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert_close(out_cl, expected, "float64")
    assert fast(x, offset, mask, weight, bias, config).is_contiguous()

    # gradients of strided inputs land in tensors of the inputs' shapes
    g = torch.randn(expected.shape, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    ref_leaves = [t.clone().requires_grad_() for t in (x, offset, mask)]
    ref(*ref_leaves, weight, bias, config).backward(g.to(device))
    for layout in (views, cl):
        leaves = [t.clone().requires_grad_() for t in layout]
        fast(*leaves, weight, bias, config).backward(g.to(device))
        for name, a, b in zip(["x", "offset", "mask"], leaves, ref_leaves):
            assert a.grad.shape == b.shape
            assert_close(a.grad, b.grad, "float64", msg=name)


def test_empty_inputs(device):
    config = CONFIGS["edvr"]
    x, offset, mask, weight, bias = make_inputs(config, device)
    out = fast(x[:0], offset[:0], mask[:0], weight, bias, config)
    assert out.shape == (0, config[4], *out_size(config))
    leaves = [t[:0].clone().requires_grad_() for t in (x, offset, mask)] + [
        weight.clone().requires_grad_(),
        bias.clone().requires_grad_(),
    ]
    fast(*leaves, config).sum().backward()
    assert [tuple(t.grad.shape) for t in leaves] == [tuple(t.shape) for t in leaves]
    assert all(t.grad.abs().sum() == 0 for t in leaves)
    # no output channels
    assert fast(x, offset, mask, weight[:0], bias[:0], config).shape == (1, 0, *out_size(config))


@pytest.mark.parametrize(
    "name", ["edvr", "edvr_groups8", "group_of_3", "stride2", "dilation2", "kernel2x3", "row"]
)
def test_gradients_match_the_reference(device, name):
    config = CONFIGS[name]
    args = make_inputs(config, device, seed=4)
    grads = []
    for fn in (fast, ref):
        leaves = [t.clone().requires_grad_() for t in args]
        out = fn(*leaves, config)
        out.backward(
            torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype).to(device)
        )
        grads.append([t.grad for t in leaves])
    for name_, a, b in zip(["x", "offset", "mask", "weight", "bias"], *grads):
        assert_close(a, b, "float64", msg=name_)


def test_gradients_of_several_chunks_and_pieces_in_float32(device):
    """Several CPU row chunks (grad_weight accumulated over them) and grad_x pieces."""
    config = (2, 64, 23, 150, 8, (3, 3), 1, 1, 1, 8)
    args = make_inputs(config, device, torch.float32, seed=6)
    grads = []
    for fn, dtype in ((fast, torch.float32), (ref, torch.float64)):
        leaves = [t.detach().to(dtype).requires_grad_() for t in args]
        out = fn(*leaves, config)
        out.backward(torch.ones_like(out))
        grads.append([t.grad for t in leaves])
    for name_, a, b in zip(["x", "offset", "mask", "weight", "bias"], *grads):
        assert_close_scaled(a, b, "float32", msg=name_)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gradients_in_lower_precision(device, dtype):
    """float32: the float32 entry of the table, relative to each gradient's magnitude. float16 /
    bfloat16 (offsets and masks in float32, as recommended): the lowp rule against the reference run
    in that dtype on the same values (offsets and masks rounded to the dtype for both)."""
    config = CONFIGS["edvr"]
    args = make_inputs(config, device, dtype, torch.float32, seed=7)
    args = [t if t.dtype == dtype else t.to(dtype).float() for t in args]  # dtype-representable values
    g = torch.randn(
        config[0],
        config[4],
        *out_size(config),
        generator=torch.Generator().manual_seed(8),
        dtype=torch.float64,
    ).to(dtype)
    leaves = [t.clone().requires_grad_() for t in args]
    fast(*leaves, config).backward(g.to(device))
    truth = [t.double().requires_grad_() for t in args]
    ref(*truth, config).backward(g.double().to(device))
    assert [t.grad.dtype for t in leaves] == [t.dtype for t in args]
    if dtype == torch.float32:
        for name_, a, b in zip(["x", "offset", "mask", "weight", "bias"], leaves, truth):
            assert_close_scaled(a.grad, b.grad, "float32", msg=name_)
        return
    own = [t.to(dtype).requires_grad_() for t in args]
    ref(*own, config).backward(g.to(device))
    for a, b, t in zip(leaves, own, truth):  # x, offset, mask, weight, bias
        assert_lowp_close(a.grad, b.grad, t.grad)


def off_grid_offsets(shape, seed):
    """Offsets whose fractional part lies in [0.1, 0.9]: no sampling point near an integer grid line
    (positions are integer bases plus offsets), where bilinear sampling is not differentiable."""
    g = torch.Generator().manual_seed(seed)
    whole = torch.randint(-2, 2, shape, generator=g).double()
    return whole + 0.1 + 0.8 * torch.rand(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", ["edvr", "stride2", "kernel2x3"])
def test_gradcheck_float64(device, name):
    config = {
        "edvr": (1, 4, 4, 5, 3, (3, 3), 1, 1, 1, 2),
        "stride2": (1, 4, 7, 8, 3, (3, 3), 2, 1, 1, 2),
        "kernel2x3": CONFIGS["kernel2x3"],
    }[name]
    x, offset, mask, weight, bias = make_inputs(config, device, seed=8)
    offset = off_grid_offsets(offset.shape, seed=9).to(device)
    leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    assert_gradcheck(lambda *a: fast(*a, config), leaves)


def test_backward_respects_output_mask(device):
    config = CONFIGS["edvr"]
    x, offset, mask, weight, bias = make_inputs(config, device)
    g = torch.randn(config[0], config[4], *out_size(config), dtype=torch.float64, device=device)
    stride, padding, dilation, dg = conv_args(config)
    op = torch.ops.vsr_fast._modulated_deform_conv_backward
    full = op(g, x, offset, mask, weight, bias, stride, padding, dilation, 1, dg, [True] * 5)
    for i in range(5):
        wanted = [j == i for j in range(5)]
        part = op(g, x, offset, mask, weight, bias, stride, padding, dilation, 1, dg, wanted)
        for j in range(5):
            if j == i:
                assert torch.equal(part[j], full[j]), j
            else:
                assert part[j].numel() == 0, j
    none = op(g, x, offset, mask, weight, None, stride, padding, dilation, 1, dg, [True] * 5)
    assert none[4].numel() == 0 and torch.equal(none[0], full[0])
    # only the offsets need a gradient: the others are never computed
    leaf = offset.clone().requires_grad_()
    fast(x, leaf, mask, weight, bias, config).backward(g)
    assert torch.equal(leaf.grad, full[1])


def test_cpu_backward_is_deterministic():
    config = (1, 16, 20, 30, 8, (3, 3), 1, 1, 1, 2)
    args = make_inputs(config, "cpu", torch.float32, scale=4.0, seed=10)
    results = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in args]
        fast(*leaves, config).sum().backward()
        results.append([t.grad for t in leaves])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_opcheck(device, dtype):
    config = (2, 4, 5, 7, 3, (3, 3), 1, 1, 1, 2)
    offset_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    x, offset, mask, weight, bias = make_inputs(config, device, dtype, offset_dtype)
    differentiable = dtype in (torch.float64, torch.float32)
    for t in (x, offset, mask, weight, bias):
        t.requires_grad_(differentiable)
    op = torch.ops.vsr_fast.modulated_deform_conv.default
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(differentiable)
    for args in [
        (x, offset, mask, weight, bias, [1, 1], [1, 1], [1, 1], 1, 2),
        (x, offset, mask, weight, None, [1, 1], [1, 1], [1, 1], 1, 2),
        (x_cl, offset, mask, weight, bias, [1, 1], [1, 1], [1, 1], 1, 2),
    ]:
        torch.library.opcheck(op, args)
    strided = (1, 4, 9, 8, 3, (2, 3), (2, 1), (1, 0), (1, 2), 1)
    xs, os_, ms, ws, bs = make_inputs(strided, device, dtype, offset_dtype)
    torch.library.opcheck(op, (xs, os_, ms, ws, bs, [2, 1], [1, 0], [1, 2], 1, 1))
    g = torch.randn(2, 3, 5, 7, dtype=torch.float64).to(device=device, dtype=dtype)
    detached = [t.detach() for t in (x, offset, mask, weight, bias)]
    backward = torch.ops.vsr_fast._modulated_deform_conv_backward.default
    torch.library.opcheck(backward, (g, *detached, [1, 1], [1, 1], [1, 1], 1, 2, [True] * 5))
    torch.library.opcheck(
        backward, (g, *detached[:4], None, [1, 1], [1, 1], [1, 1], 1, 2, [False, True, False, True, True])
    )


def test_torch_compile_forward_and_backward(device):
    """ModulatedDCNPack's tail compiled with fullgraph=True, against the same tail on the float64
    reference DCN (inductor's sigmoid may differ from eager's by an ulp; the op is opaque to it)."""
    config = CONFIGS["edvr"]
    stride, padding, dilation, dg = conv_args(config)

    def pack(conv, x, offset_logits, weight, bias):
        # ModulatedDCNPack's tail: split the conv_offset output, sigmoid the mask, deform-convolve
        o1, o2, m = torch.chunk(offset_logits, 3, dim=1)
        out = conv(x, torch.cat((o1, o2), 1), torch.sigmoid(m), weight, bias, stride, padding, dilation, dg)
        return F.leaky_relu(out, 0.1)

    def op(x, offset, mask, weight, bias, stride, padding, dilation, dg):
        return vsr_fast.modulated_deform_conv(x, offset, mask, weight, bias, stride, padding, dilation, 1, dg)

    x, offset, mask, weight, bias = make_inputs(config, device, torch.float32, seed=11)
    logits = torch.cat([offset, torch.randn_like(mask)], 1)
    compiled = torch.compile(lambda *a: pack(op, *a), fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (x, logits, weight, bias)]
    out = compiled(*leaves)
    truth = [t.double().requires_grad_() for t in (x, logits, weight, bias)]
    expected = pack(reference.modulated_deform_conv2d, *truth)
    assert_close(out, expected, "float32")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(12)).to(device)
    out.backward(g)
    expected.backward(g.double())
    for name, a, b in zip(["x", "logits", "weight", "bias"], leaves, truth):
        assert_close_scaled(a.grad, b.grad, "float32", msg=name)


def test_matches_torchvision_deform_conv2d(device):
    """torchvision.ops.deform_conv2d (an optional test dependency) as a second, independent oracle."""
    tv_ops = pytest.importorskip(
        "torchvision.ops",
        reason="torchvision is not installed (optional: "
        "pip install torchvision==0.29.1 to compare against its deform_conv2d)",
    )
    for name in ["edvr", "edvr_groups8", "stride2", "dilation2", "kernel2x3"]:
        config = CONFIGS[name]
        args = make_inputs(config, device, seed=12)
        stride, padding, dilation, _ = conv_args(config)
        leaves = [t.clone().requires_grad_() for t in args]
        out = fast(*leaves, config)
        x, offset, mask, weight, bias = [t.clone().requires_grad_() for t in args]
        expected = tv_ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
        assert_close(out, expected, "float64", msg=name)
        g = torch.randn_like(out)
        out.backward(g)
        expected.backward(g)
        for a, b in zip(leaves, (x, offset, mask, weight, bias)):
            assert_close(a.grad, b.grad, "float64", msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_output_element_is_written(device, dtype, channels_last, monkeypatch):
    """Every buffer the kernels allocate starts out NaN (poisoned_allocations): an output or gradient
    element they forget to write stays NaN. Several row chunks on CPU. CUDA's grad_x (atomics) is not
    allowed in the deterministic mode the poisoning uses, so there it is not asked for; it is zeroed
    before its scatter anyway."""
    # the op's CUDA GEMMs are cuBLAS calls, which deterministic mode allows only with this setting
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    config = (1, 64, 31, 45, 64, (3, 3), 1, 1, 1, 8)
    x, offset, mask, weight, bias = make_inputs(config, device, dtype, torch.float32)
    if channels_last:
        x, offset, mask = (t.contiguous(memory_format=torch.channels_last) for t in (x, offset, mask))
    stride, padding, dilation, dg = conv_args(config)
    grad = torch.ones(config[0], config[4], *out_size(config), dtype=dtype, device=device)
    wanted = [device.type == "cpu", True, True, True, True]
    with poisoned_allocations():
        out = torch.ops.vsr_fast.modulated_deform_conv(
            x, offset, mask, weight, bias, stride, padding, dilation, 1, dg
        )
        grads = torch.ops.vsr_fast._modulated_deform_conv_backward(
            grad, x, offset, mask, weight, bias, stride, padding, dilation, 1, dg, wanted
        )
    assert not out.isnan().any()
    for name, g, w in zip(["x", "offset", "mask", "weight", "bias"], grads, wanted):
        assert not (w and g.isnan().any()), name


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda a: {**a, "x": a["x"][0]}, r"expected x \[N, C, H, W\]"),
        (lambda a: {**a, "weight": a["weight"][0]}, r"expected weight \[C_out, C, kh, kw\]"),
        (lambda a: {**a, "weight": a["weight"][:, :3]}, r"expects 3 input channels"),
        (
            lambda a: {**a, "offset": a["offset"][:, :10]},
            r"expected offset \[1, 36, 9, 11\].*got \[1, 10, 9, 11\]",
        ),
        (lambda a: {**a, "offset": a["offset"][..., :5]}, r"expected offset \[1, 36, 9, 11\]"),
        (lambda a: {**a, "mask": a["mask"][:, :17]}, r"expected mask \[1, 18, 9, 11\].*got \[1, 17, 9, 11\]"),
        (lambda a: {**a, "bias": a["bias"][:3]}, r"expected bias \[8\], got \[3\]"),
        (lambda a: {**a, "deform_groups": 3}, r"16 input channels cannot be split into deform_groups=3"),
        (lambda a: {**a, "deform_groups": 0}, r"deform_groups=0"),
        (lambda a: {**a, "groups": 2}, r"only groups=1 is supported"),
        (lambda a: {**a, "stride": [0, 1]}, r"expected stride >= 1"),
        (lambda a: {**a, "padding": [-1, 1]}, r"padding >= 0"),
        (lambda a: {**a, "x": a["x"][..., :1, :1], "padding": [0, 0]}, r"smaller than the dilated kernel"),
        (lambda a: {**a, "offset": a["offset"].float()}, r"offset and mask must share x's dtype"),
        (
            lambda a: {
                **a,
                "x": a["x"].half(),
                "weight": a["weight"].half(),
                "bias": a["bias"].half(),
                "mask": a["mask"].half(),
            },
            r"offset and mask must share x's dtype",
        ),
        (lambda a: {**a, "weight": a["weight"].float()}, r"weight and bias must have x's dtype"),
        (lambda a: {**a, "x": a["x"].long()}, r"floating dtype"),
    ],
)
def test_bad_inputs_raise_clear_errors(device, bad, message):
    x, offset, mask, weight, bias = make_inputs(CONFIGS["edvr"], device)
    a = bad(
        dict(
            x=x,
            offset=offset,
            mask=mask,
            weight=weight,
            bias=bias,
            stride=[1, 1],
            padding=[1, 1],
            dilation=[1, 1],
            groups=1,
            deform_groups=2,
        )
    )
    with pytest.raises(RuntimeError, match="vsr_fast::modulated_deform_conv") as info:
        torch.ops.vsr_fast.modulated_deform_conv(*a.values())
    info.match(message)
    # the fake (Meta) kernels refuse the same inputs in the same words, forward and backward
    real = str(info.value).replace(str(device), "meta")
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in a.items()}
    with pytest.raises(RuntimeError) as fake_info:
        torch.ops.vsr_fast.modulated_deform_conv(*meta.values())
    assert str(fake_info.value) == real
    grad = torch.empty(1, 8, 9, 11, dtype=meta["x"].dtype, device="meta")
    with pytest.raises(RuntimeError) as fake_info:
        torch.ops.vsr_fast._modulated_deform_conv_backward(grad, *meta.values(), [True] * 5)
    backward = "vsr_fast::_modulated_deform_conv_backward"
    assert str(fake_info.value) == real.replace("vsr_fast::modulated_deform_conv", backward)


def test_bad_arguments_of_the_wrapper_and_the_backward(device):
    x, offset, mask, weight, bias = make_inputs(CONFIGS["edvr"], device)
    with pytest.raises(ValueError, match=r"vsr_fast::modulated_deform_conv: stride must be an int or two"):
        vsr_fast.modulated_deform_conv(x, offset, mask, weight, bias, stride=(1, 1, 1))
    with pytest.raises(RuntimeError, match=r"vsr_fast::_modulated_deform_conv_backward: expected grad_out"):
        torch.ops.vsr_fast._modulated_deform_conv_backward(
            x, x, offset, mask, weight, bias, [1, 1], [1, 1], [1, 1], 1, 2, [True] * 5
        )
    # grad_out of the right shape but not x's dtype; and the fake kernel's words for both
    grad = torch.zeros(1, 8, 9, 11, dtype=torch.float32, device=device)
    for bad_grad in (x, grad):
        args = (offset, mask, weight, bias, [1, 1], [1, 1], [1, 1], 1, 2, [True] * 5)
        with pytest.raises(RuntimeError, match="_modulated_deform_conv_backward: expected grad_out") as info:
            torch.ops.vsr_fast._modulated_deform_conv_backward(bad_grad, x, *args)
        meta = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in (bad_grad, x, *args)]
        with pytest.raises(RuntimeError) as fake_info:
            torch.ops.vsr_fast._modulated_deform_conv_backward(*meta)
        assert str(fake_info.value) == str(info.value).replace(str(device), "meta")


@pytest.mark.cuda
def test_cuda_device_mismatch_and_determinism(monkeypatch):
    # the op's GEMMs are cuBLAS calls, which deterministic mode allows only with this workspace setting
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    config = CONFIGS["edvr"]
    x, offset, mask, weight, bias = make_inputs(config, "cuda", torch.float32)
    with pytest.raises(RuntimeError, match=r"vsr_fast::modulated_deform_conv: every tensor must be on x's"):
        fast(x, offset.cpu(), mask, weight, bias, config)
    xr = x.clone().requires_grad_()
    out = fast(xr, offset, mask, weight, bias, config)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="vsr_fast::_modulated_deform_conv_backward"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    # offsets, masks and weights alone need no atomics, so they stay allowed
    leaves = [t.clone().requires_grad_() for t in (offset, mask, weight)]
    torch.use_deterministic_algorithms(True)
    try:
        fast(x, *leaves[:2], leaves[2], bias, config).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(t.grad is not None for t in leaves)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_matches_cpu(dtype):
    """The two backends share the sampling maths: in float32 they agree within the table's float32
    tolerance, in float16 the CUDA result's error is at most 2x the CPU kernel's."""
    config = (2, 64, 33, 47, 32, (3, 3), 1, 1, 1, 8)
    args = make_inputs(config, "cpu", dtype, torch.float32, scale=3.0)
    cuda, cpu = fast(*(t.cuda() for t in args), config).cpu(), fast(*args, config)
    if dtype == torch.float32:
        assert_close(cuda, cpu, "float32")
    else:
        assert_lowp_close(cuda, cpu, ref64(*args, config))
