"""vsr_fast::modulated_deform_conv: DCNv2 (EDVR's ModulatedDCNPack) as one op, forward and backward."""

import torch
from torch._prims_common import suggest_memory_format

__all__ = ["modulated_deform_conv"]


def _pair(value, name):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"vsr_fast::modulated_deform_conv: {name} must be an int or two ints, got {value!r}")
    return list(pair)


def modulated_deform_conv(
    x, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, deform_groups=1
):
    """Modulated deformable convolution (DCNv2), mmcv's ``modulated_deform_conv2d`` maths.

    ``out = conv(weight, bilinear(x, p0 + p_k + offset_k) * mask_k) + bias`` with mmcv's zero-outside
    bilinear rule (see vsr_fast/reference/dcn.py, the spec).

    Args:
        x: [N, C, H, W], float32/float64/float16/bfloat16, any strides; a channels_last x gives a
            channels_last output.
        offset: [N, 2 * deform_groups * kh * kw, H_out, W_out]; for deform group g and tap
            k = i * kw + j, channel 2 * (kh * kw * g + k) is the y displacement (pixels), the next
            one the x displacement (the mmcv / torchvision layout).
        mask: [N, deform_groups * kh * kw, H_out, W_out], the modulation (already through its
            sigmoid), channel kh * kw * g + k.
        weight: [C_out, C, kh, kw]; bias: [C_out] or None. x's dtype.
        stride, padding, dilation: int or pair. groups: 1 only (what EDVR uses).
        deform_groups: C is split into this many consecutive channel blocks, each with its own
            offsets and mask.

    offset and mask have x's dtype, or float32 when x is float16/bfloat16 (recommended there):
    sampling positions are split into integer and fraction in float32 (float64 for float64 x), so
    the bilinear weights keep the offsets' own precision. A NaN or inf offset makes its sample, and
    so the output pixel, NaN (as the reference; mmcv and torchvision give 0 there). Differentiable
    in x, offset, mask, weight and bias (first order).
    """
    return torch.ops.vsr_fast.modulated_deform_conv(
        x,
        offset,
        mask,
        weight,
        bias,
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
        groups,
        deform_groups,
    )


# C++'s names of the dtypes (c10::ScalarType), so that the fake kernels' errors read as the real ones'
_SCALAR_TYPE = {
    torch.float32: "Float",
    torch.float64: "Double",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.int64: "Long",
    torch.int32: "Int",
}
# csrc/include/vsr_fast/modulated_deform_conv.h, deform_conv_math::kMaxExtent
_MAX_EXTENT = 1 << 22
_INT32_MAX = 2**31 - 1


def _name(dtype):
    return _SCALAR_TYPE.get(dtype, str(dtype))


def _check_args(op, x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
    """check_modulated_deform_conv_args of the shared header (and the CPU kernel's pixel limit),
    in the same order and words, for the fake kernels: a bad call fails under torch.compile /
    FakeTensor / Meta as it does when it runs. Returns the output's (H_out, W_out)."""

    def check(ok, *message):
        torch._check(ok, lambda: op + ": " + "".join(str(m) for m in message))

    xs, ws = list(x.shape), list(weight.shape)
    check(x.dim() == 4, "expected x [N, C, H, W], got x of shape ", xs)
    check(weight.dim() == 4, "expected weight [C_out, C, kh, kw], got weight of shape ", ws)
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    check(
        len(stride) == 2 and len(padding) == 2 and len(dilation) == 2,
        "stride, padding and dilation must have two entries each, got ",
        f"{stride}, {padding}, {dilation}",
    )
    check(
        min(stride) >= 1 and min(dilation) >= 1 and min(padding) >= 0,
        f"expected stride >= 1, dilation >= 1, padding >= 0, got stride {stride}, padding {padding}, ",
        f"dilation {dilation}",
    )
    check(groups == 1, "only groups=1 is supported (what EDVR and the reference use), got groups=", groups)
    n, c, h, w = x.shape
    c_out, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
    check(weight.shape[1] == c, f"weight {ws} expects {weight.shape[1]} input channels, x {xs} has {c}")
    check(kh >= 1 and kw >= 1, "empty kernel in weight ", ws)
    check(
        deform_groups >= 1 and c % deform_groups == 0,
        c,
        " input channels cannot be split into ",
        "deform_groups=",
        deform_groups,
    )
    extent_h, extent_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    padded_h, padded_w = h + 2 * padding[0], w + 2 * padding[1]
    check(
        padded_h < _MAX_EXTENT
        and padded_w < _MAX_EXTENT
        and extent_h < _MAX_EXTENT
        and extent_w < _MAX_EXTENT,
        f"sizes too large: x {xs}, padding {padding}, kernel extent {extent_h}x{extent_w}",
    )
    ho = (padded_h - extent_h) // stride[0] + 1
    wo = (padded_w - extent_w) // stride[1] + 1
    check(
        padded_h >= extent_h and padded_w >= extent_w,
        f"the padded input {padded_h}x{padded_w} (x {xs}, padding {padding}) is smaller than the dilated ",
        f"kernel {extent_h}x{extent_w}",
    )
    k = kh * kw
    check(
        offset.dim() == 4 and list(offset.shape) == [n, 2 * deform_groups * k, ho, wo],
        f"expected offset [{n}, {2 * deform_groups * k}, {ho}, {wo}] (N, 2 * deform_groups * kh * kw, ",
        f"H_out, W_out), got {list(offset.shape)}",
    )
    check(
        mask.dim() == 4 and list(mask.shape) == [n, deform_groups * k, ho, wo],
        f"expected mask [{n}, {deform_groups * k}, {ho}, {wo}] (N, deform_groups * kh * kw, H_out, W_out), ",
        f"got {list(mask.shape)}",
    )
    if bias is not None:
        check(bias.dim() == 1 and bias.shape[0] == c_out, f"expected bias [{c_out}], got {list(bias.shape)}")
    for t in (offset, mask, weight):
        check(t.device == x.device, f"every tensor must be on x's device {x.device}, got one on {t.device}")
    if bias is not None:
        check(bias.device == x.device, f"bias must be on x's device {x.device}, got {bias.device}")
    check(
        x.dtype.is_floating_point,
        "expected x of a floating dtype (float32, float64, float16, bfloat16), got ",
        _name(x.dtype),
    )
    check(
        weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype),
        f"weight and bias must have x's dtype {_name(x.dtype)}, got weight {_name(weight.dtype)}",
        "" if bias is None else f" and bias {_name(bias.dtype)}",
    )
    reduced = x.dtype in (torch.float16, torch.bfloat16)
    check(
        offset.dtype == mask.dtype
        and (offset.dtype == x.dtype or (reduced and offset.dtype == torch.float32)),
        "offset and mask must share x's dtype (or float32 when x is float16/bfloat16), got x ",
        f"{_name(x.dtype)}, offset {_name(offset.dtype)}, mask {_name(mask.dtype)}",
    )
    if x.device.type == "cpu":  # the CPU kernel's row tables index pixels with int32
        check(h * w + 4 <= _INT32_MAX, f"frames of over 2^31 pixels are not supported on CPU, got x {xs}")
    return ho, wo


@torch.library.register_fake("vsr_fast::modulated_deform_conv")
def _fake(x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
    ho, wo = _check_args(
        "vsr_fast::modulated_deform_conv",
        x,
        offset,
        mask,
        weight,
        bias,
        stride,
        padding,
        dilation,
        groups,
        deform_groups,
    )
    return torch.empty(
        (x.shape[0], weight.shape[0], ho, wo),
        dtype=x.dtype,
        device=x.device,
        memory_format=suggest_memory_format(x),
    )


@torch.library.register_fake("vsr_fast::_modulated_deform_conv_backward")
def _backward_fake(
    grad_out, x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups, output_mask
):
    op = "vsr_fast::_modulated_deform_conv_backward"
    ho, wo = _check_args(op, x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups)
    expected = [x.shape[0], weight.shape[0], ho, wo]
    torch._check(
        grad_out.dim() == 4 and list(grad_out.shape) == expected,
        lambda: f"{op}: expected grad_out {expected}, got {list(grad_out.shape)}",
    )
    torch._check(
        grad_out.dtype == x.dtype and grad_out.device == x.device,
        lambda: (
            f"{op}: expected grad_out with x's dtype and device ({_name(x.dtype)}, {x.device}), got "
            f"{_name(grad_out.dtype)}, {grad_out.device}"
        ),
    )

    def like(t, wanted):
        return torch.empty_like(t) if wanted else t.new_empty(0)

    grad_bias = torch.empty_like(bias) if output_mask[4] and bias is not None else weight.new_empty(0)
    return (
        like(x, output_mask[0]),
        like(offset, output_mask[1]),
        like(mask, output_mask[2]),
        like(weight, output_mask[3]),
        grad_bias,
    )


def _setup_context(ctx, inputs, output):
    x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups = inputs
    ctx.save_for_backward(x, offset, mask, weight, bias)
    ctx.conv_args = (stride, padding, dilation, groups, deform_groups)


def _backward(ctx, grad_out):
    x, offset, mask, weight, bias = ctx.saved_tensors
    wanted = [bool(w) for w in ctx.needs_input_grad[:5]]
    if not any(wanted):
        return (None,) * 10
    grads = torch.ops.vsr_fast._modulated_deform_conv_backward(
        grad_out, x, offset, mask, weight, bias, *ctx.conv_args, wanted
    )
    return tuple(g if w else None for g, w in zip(grads, wanted)) + (None,) * 5


torch.library.register_autograd("vsr_fast::modulated_deform_conv", _backward, setup_context=_setup_context)
