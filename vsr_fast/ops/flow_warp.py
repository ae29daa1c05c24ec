"""vsr_fast::flow_warp: warp features by an optical flow in one pass (no grid tensor)."""

import torch

from ._checks import check_flow_warp_args, check_flow_warp_backward_args, require_tensor

__all__ = ["flow_warp"]

# The op schema's integers for the modes (csrc/include/vsr_fast/flow_warp.h: Interpolation, Padding).
INTERPOLATION = {"bilinear": 0, "nearest": 1}
PADDING_MODE = {"zeros": 0, "border": 1}


_OP = "vsr_fast::flow_warp"


def _mode(name, value, table):
    if isinstance(value, str) and value in table:
        return table[value]
    raise ValueError(f"{_OP}: unknown {name} {value!r}; expected one of {sorted(table)}")


def flow_warp(x, flow, interpolation="bilinear", padding_mode="zeros", align_corners=True):
    """Warp ``x`` by ``flow``, as mmagic's ``flow_warp`` does, in one fused pass.

    Args:
        x: [N, C, H, W] features, float32/float64/float16/bfloat16, any strides (channels_last and
            views work; the output keeps x's memory format).
        flow: [N, H, W, 2] displacement in pixels, x (width) first. x's dtype, or float32 when x is
            float16/bfloat16. Output pixel (i, j) samples x at (j + flow[..., 0], i + flow[..., 1]).
        interpolation: ``'bilinear'`` or ``'nearest'``.
        padding_mode: ``'zeros'`` (taps outside x read 0) or ``'border'`` (positions clipped).
        align_corners: as mmagic's ``flow_warp`` (True in BasicVSR/IconVSR/SPyNet).

    Coordinates are always computed in float32 (float64 for float64 x), unlike the official code
    whose fp16 grid is off by up to 0.25 px on wide frames. Differentiable in x and flow (first order);
    at a pixel whose sampling position is NaN/inf (bilinear, zeros padding: the output is NaN there)
    the flow gradient is 0 (docs/design.md, "flow_warp and non-finite flows").
    """
    require_tensor(_OP, "x", x)
    require_tensor(_OP, "flow", flow)
    if not isinstance(align_corners, bool):
        raise TypeError(f"{_OP}: align_corners must be True or False, got {align_corners!r}")
    return torch.ops.vsr_fast.flow_warp(
        x,
        flow,
        _mode("interpolation", interpolation, INTERPOLATION),
        _mode("padding_mode", padding_mode, PADDING_MODE),
        align_corners,
    )


@torch.library.register_fake("vsr_fast::flow_warp")
def _flow_warp_fake(x, flow, interpolation, padding_mode, align_corners):
    check_flow_warp_args(_OP, x, flow, interpolation, padding_mode)
    return torch.empty_like(x)


@torch.library.register_fake("vsr_fast::_flow_warp_backward")
def _flow_warp_backward_fake(grad_out, x, flow, interpolation, padding_mode, align_corners, output_mask):
    check_flow_warp_backward_args(grad_out, x, flow, interpolation, padding_mode)
    grad_x = torch.empty_like(x) if output_mask[0] else x.new_empty(0)
    grad_flow = torch.empty_like(flow) if output_mask[1] else flow.new_empty(0)
    return grad_x, grad_flow


def _setup_context(ctx, inputs, output):
    x, flow, interpolation, padding_mode, align_corners = inputs
    ctx.save_for_backward(x, flow)
    ctx.modes = (interpolation, padding_mode, align_corners)


def _backward(ctx, grad_out):
    x, flow = ctx.saved_tensors
    need_x, need_flow = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_x or need_flow):
        return None, None, None, None, None
    grad_x, grad_flow = torch.ops.vsr_fast._flow_warp_backward(
        grad_out, x, flow, *ctx.modes, [need_x, need_flow]
    )
    return (grad_x if need_x else None), (grad_flow if need_flow else None), None, None, None


torch.library.register_autograd("vsr_fast::flow_warp", _backward, setup_context=_setup_context)
