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


def _output_size(x, weight, stride, padding, dilation):
    kh, kw = weight.shape[2], weight.shape[3]
    ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


@torch.library.register_fake("vsr_fast::modulated_deform_conv")
def _fake(x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
    torch._check(
        x.dim() == 4 and weight.dim() == 4,
        lambda: (
            f"vsr_fast::modulated_deform_conv: expected x [N, C, H, W] and weight [C_out, C, kh, kw], "
            f"got {list(x.shape)} and {list(weight.shape)}"
        ),
    )
    ho, wo = _output_size(x, weight, stride, padding, dilation)
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
