"""The ops' argument checks on the Python side, written once for every op.

* ``check_<op>_args``: what the fake (Meta) kernels run. The compiled kernels of both backends check
  their arguments with the functions of the same names in ``csrc/include/vsr_fast/<op>.h``; these
  are the same conditions, in the same order, raising RuntimeError with the same words, so that an
  op rejects the same input alike eagerly, under ``torch.compile`` and on the meta device (also
  when the inputs mix meta and real tensors, where the dispatcher picks the fake kernel). Each op's
  bad-input tests run every case through both (``tests/_helpers.assert_fake_raises_like_real``),
  which fails when the two drift apart.
* ``require_tensor`` / ``require_tensors``: what the public wrappers check before a call reaches
  the dispatcher, whose own message for a None or a non-tensor names no op.

Sizes are compared as the fake tensors give them (SymInts under dynamic shapes: a comparison
guards, as the compiled check would have required it anyway).
"""

import torch

__all__ = [
    "check_flow_warp_args",
    "check_flow_warp_backward_args",
    "check_keyframe_fusion_args",
    "check_propagation_step_args",
    "check_residual_trunk_args",
    "check_spynet_basic_module_args",
    "check_trunk_weights",
    "require_tensor",
    "require_tensors",
]

# c10::toString(ScalarType): how the C++ checks print a dtype
_SCALAR_TYPE_NAMES = {
    torch.float32: "Float",
    torch.float64: "Double",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.complex32: "ComplexHalf",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
    torch.bool: "Bool",
    torch.uint8: "Byte",
    torch.int8: "Char",
    torch.int16: "Short",
    torch.int32: "Int",
    torch.int64: "Long",
    torch.uint16: "UInt16",
    torch.uint32: "UInt32",
    torch.uint64: "UInt64",
    torch.float8_e4m3fn: "Float8_e4m3fn",
    torch.float8_e5m2: "Float8_e5m2",
}
_REDUCED = (torch.float16, torch.bfloat16)


def _dtype(t):
    return _SCALAR_TYPE_NAMES.get(t.dtype, str(t.dtype))


def _sizes(t):
    return str(list(t.shape))


def _check(condition, *message):
    if not condition:
        raise RuntimeError("".join(str(m) for m in message))


def _defined(t):
    return "a tensor" if t is not None else "None"


def _check_weight_matches(op, i, w, b, like, whose):
    """weights[i] and biases[i] in `like`'s dtype and on its device; `whose` names `like` in the message."""
    _check(
        w.dtype == like.dtype and b.dtype == like.dtype,
        op,
        f": weights and biases must have {whose} dtype ",
        _dtype(like),
        ", got ",
        _dtype(w),
        " / ",
        _dtype(b),
        " at index ",
        i,
    )
    _check(
        w.device == like.device and b.device == like.device,
        op,
        f": weights and biases must be on {whose} device ",
        like.device,
        ", got ",
        w.device,
        " / ",
        b.device,
        " at index ",
        i,
    )


# ---- flow_warp (csrc/include/vsr_fast/flow_warp.h) ------------------------------------------------


def check_flow_warp_args(op, x, flow, interpolation, padding_mode):
    _check(
        x is not None and flow is not None,
        op,
        ": x and flow must be tensors, got ",
        _defined(x),
        " and ",
        _defined(flow),
    )
    _check(x.dim() == 4, op, ": expected x [N, C, H, W], got x of shape ", _sizes(x))
    _check(
        flow.dim() == 4
        and flow.size(3) == 2
        and flow.size(0) == x.size(0)
        and flow.size(1) == x.size(2)
        and flow.size(2) == x.size(3),
        op,
        ": expected flow [N, H, W, 2] matching x [N, C, H, W] = ",
        _sizes(x),
        ", got flow ",
        _sizes(flow),
    )
    _check(
        x.device == flow.device,
        op,
        ": x and flow must be on the same device, got x on ",
        x.device,
        " and flow on ",
        flow.device,
    )
    _check(
        x.dtype.is_floating_point,
        op,
        ": expected x of a floating dtype (float32, float64, float16, bfloat16), got ",
        _dtype(x),
    )
    _check(
        flow.dtype == x.dtype or (x.dtype in _REDUCED and flow.dtype == torch.float32),
        op,
        ": flow must have x's dtype (or float32 when x is float16/bfloat16), got x ",
        _dtype(x),
        " and flow ",
        _dtype(flow),
    )
    _check(
        interpolation in (0, 1),
        op,
        ": interpolation must be 0 (bilinear) or 1 (nearest), got ",
        interpolation,
    )
    _check(padding_mode in (0, 1), op, ": padding_mode must be 0 (zeros) or 1 (border), got ", padding_mode)


def check_flow_warp_backward_args(grad_out, x, flow, interpolation, padding_mode):
    op = "vsr_fast::_flow_warp_backward"
    check_flow_warp_args(op, x, flow, interpolation, padding_mode)
    _check(grad_out is not None, op, ": grad_out must be a tensor, got None")
    _check(
        grad_out.shape == x.shape,
        op,
        ": expected grad_out of x's shape ",
        _sizes(x),
        ", got ",
        _sizes(grad_out),
    )
    _check(
        grad_out.dtype == x.dtype and grad_out.device == x.device,
        op,
        ": expected grad_out with x's dtype and device (",
        _dtype(x),
        ", ",
        x.device,
        "), got ",
        _dtype(grad_out),
        ", ",
        grad_out.device,
    )


# ---- the trunk's convolutions (csrc/include/vsr_fast/residual_trunk.h) ---------------------------


def check_trunk_weights(op, weights, biases, in_channels, like):
    """Returns the number of residual blocks; in_channels: the channels the input conv expects."""
    _check(
        len(weights) > 0 and len(weights) % 2 == 1,
        op,
        ": expected 1 + 2 * num_blocks weights (input conv, then conv1/conv2 per block), got ",
        len(weights),
    )
    _check(
        len(biases) == len(weights),
        op,
        ": expected one bias per weight (",
        len(weights),
        "), got ",
        len(biases),
    )
    for i, (w, b) in enumerate(zip(weights, biases)):
        _check(
            w is not None and b is not None,
            op,
            ": weights[",
            i,
            "] and biases[",
            i,
            "] must be tensors, got None",
        )
    c = weights[0].size(0) if weights[0].dim() == 4 else -1
    for i, (w, b) in enumerate(zip(weights, biases)):
        expect_in = in_channels if i == 0 else c
        _check(
            w.dim() == 4 and w.size(0) == c and w.size(1) == expect_in and w.size(2) == 3 and w.size(3) == 3,
            op,
            f": weights[{i}] must be [{c}, {expect_in}, 3, 3], got ",
            _sizes(w),
        )
        _check(b.dim() == 1 and b.size(0) == c, op, f": biases[{i}] must be [{c}], got ", _sizes(b))
        _check_weight_matches(op, i, w, b, like, "the input's")
    _check(
        in_channels > 0 and c > 0,
        op,
        ": expected at least one input and one output channel, got ",
        in_channels,
        " input channels and weights[0] ",
        _sizes(weights[0]),
    )
    return len(weights) // 2


def check_residual_trunk_args(x, weights, biases):
    op = "vsr_fast::residual_trunk"
    _check(x is not None, op, ": x must be a tensor, got None")
    _check(x.dim() == 4, op, ": expected x [N, C_in, H, W], got ", _sizes(x))
    _check(x.dtype.is_floating_point, op, ": expected a floating dtype, got ", _dtype(x))
    check_trunk_weights(op, weights, biases, x.size(1), x)


# ---- propagation_step (csrc/include/vsr_fast/propagation_step.h) ---------------------------------


def check_propagation_step_args(lr, feature, state, flow, weights, biases):
    """Returns the state channel count C (the trunk's width)."""
    op = "vsr_fast::propagation_step"
    _check(lr is not None, op, ": lr must be a tensor, got None")
    _check(lr.dim() == 4, op, ": expected lr [N, C_lr, H, W], got ", _sizes(lr))
    _check(lr.dtype.is_floating_point, op, ": expected a floating dtype, got ", _dtype(lr))
    first = weights[0] if len(weights) > 0 else None
    _check(
        first is not None and first.dim() == 4,
        op,
        ": expected weights[0] [C, C_in, 3, 3], got ",
        first.dim() if first is not None else 0,
        "-d",
    )
    c = first.size(0)

    def check_image(t, name):
        _check(
            t.dim() == 4 and t.size(0) == lr.size(0) and t.size(2) == lr.size(2) and t.size(3) == lr.size(3),
            op,
            f": expected {name} [N, *, H, W] matching lr ",
            _sizes(lr),
            ", got ",
            _sizes(t),
        )
        _check(
            t.dtype == lr.dtype and t.device == lr.device,
            op,
            f": {name} must have lr's dtype and device (",
            _dtype(lr),
            ", ",
            lr.device,
            "), got ",
            _dtype(t),
            ", ",
            t.device,
        )

    in_channels = lr.size(1) + c
    if feature is not None:
        check_image(feature, "feature")
        in_channels = in_channels + feature.size(1)
    if state is not None:
        check_image(state, "state")
        _check(state.size(1) == c, op, f": state must have the trunk's {c} channels, got ", _sizes(state))
    if flow is not None:
        _check(state is not None, op, ": a flow needs a state to warp")
        _check(
            flow.dim() == 4
            and flow.size(0) == lr.size(0)
            and flow.size(1) == lr.size(2)
            and flow.size(2) == lr.size(3)
            and flow.size(3) == 2,
            op,
            ": expected flow [N, H, W, 2] matching lr ",
            _sizes(lr),
            ", got ",
            _sizes(flow),
        )
        _check(
            flow.device == lr.device, op, ": flow must be on lr's device ", lr.device, ", got ", flow.device
        )
        _check(
            flow.dtype == lr.dtype or (lr.dtype in _REDUCED and flow.dtype == torch.float32),
            op,
            ": flow must have lr's dtype (or float32 for float16/bfloat16), got ",
            _dtype(flow),
        )
    check_trunk_weights(op, weights, biases, in_channels, lr)
    return c


# ---- keyframe_fusion (csrc/include/vsr_fast/keyframe_fusion.h) -----------------------------------


def check_keyframe_fusion_args(state, refill, weight, bias):
    op = "vsr_fast::keyframe_fusion"
    named = {"state": state, "refill": refill, "weight": weight, "bias": bias}
    missing = [name for name, t in named.items() if t is None]
    _check(not missing, op, ": state, refill, weight and bias must be tensors, got None for ", *missing[:1])
    _check(
        state.dim() == 4
        and refill.dim() == 4
        and state.size(0) == refill.size(0)
        and state.size(2) == refill.size(2)
        and state.size(3) == refill.size(3),
        op,
        ": expected state [N, C_s, H, W] and refill [N, C_r, H, W] of one size, got ",
        _sizes(state),
        " and ",
        _sizes(refill),
    )
    _check(
        state.dtype.is_floating_point and refill.dtype == state.dtype and refill.device == state.device,
        op,
        ": state and refill need one floating dtype and device, got ",
        _dtype(state),
        " on ",
        state.device,
        " and ",
        _dtype(refill),
        " on ",
        refill.device,
    )
    check_trunk_weights(op, [weight], [bias], state.size(1) + refill.size(1), state)


# ---- spynet_basic_module (csrc/include/vsr_fast/spynet_basic_module.h) ---------------------------


def check_spynet_basic_module_args(x, weights, biases):
    op = "vsr_fast::spynet_basic_module"
    _check(x.dim() == 4, op, ": expected x [N, C_in, H, W], got ", _sizes(x))
    _check(x.dtype.is_floating_point, op, ": expected a floating dtype, got ", _dtype(x))
    _check(
        len(weights) == 5 and len(biases) == 5,
        op,
        ": expected 5 weights and 5 biases (the five 7x7 convolutions), got ",
        len(weights),
        " and ",
        len(biases),
    )
    channels = x.size(1)
    for i, (w, b) in enumerate(zip(weights, biases)):
        _check(
            w.dim() == 4 and w.size(1) == channels and w.size(2) == 7 and w.size(3) == 7,
            op,
            f": weights[{i}] must be [C_out, {channels}, 7, 7], got ",
            _sizes(w),
        )
        _check(
            b.dim() == 1 and b.size(0) == w.size(0),
            op,
            f": biases[{i}] must be [{w.size(0)}], got ",
            _sizes(b),
        )
        _check_weight_matches(op, i, w, b, x, "x's")
        _check(
            channels > 0 and w.size(0) > 0,
            op,
            f": weights[{i}] must have input and output channels, got ",
            _sizes(w),
        )
        channels = w.size(0)


# ---- the public wrappers -------------------------------------------------------------------------


def require_tensor(op, name, value, optional=False):
    """TypeError naming the op and the argument unless `value` is a tensor (or None, if optional)."""
    if torch.is_tensor(value) or (optional and value is None):
        return value
    expected = "a tensor or None" if optional else "a tensor"
    raise TypeError(f"{op}: {name} must be {expected}, got {_kind(value)}")


def require_tensors(op, name, values):
    """`values` as a list, each a tensor; TypeError naming the op and the entry otherwise."""
    if torch.is_tensor(values) or not hasattr(values, "__iter__"):
        raise TypeError(f"{op}: {name} must be a list of tensors, got {_kind(values)}")
    values = list(values)
    for i, value in enumerate(values):
        require_tensor(op, f"{name}[{i}]", value)
    return values


def _kind(value):
    return "None" if value is None else ("a tensor" if torch.is_tensor(value) else type(value).__name__)
