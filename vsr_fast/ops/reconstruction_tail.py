"""vsr_fast::reconstruction_tail: BasicVSR / IconVSR's x4 reconstruction tail as one op.

BasicVSR's 1x1 fusion (optional), the two conv + pixel_shuffle + LeakyReLU stages, conv_hr + LeakyReLU
and conv_last with the bilinear x4 base of the LR frame added. Backward is by recomputation of the
reference tail (`vsr_fast.reference.reconstruction_tail`): only the inputs are saved.
"""

import torch
from torch._prims_common import suggest_memory_format

from .. import reference
from ._recompute import register_recompute_autograd

__all__ = ["reconstruction_tail"]

_OP = "vsr_fast::reconstruction_tail"
_NAMES = ("upsample1", "upsample2", "conv_hr", "conv_last")


def reconstruction_tail(lr, feat, weights, biases, feat_forward=None, fusion_weight=None, fusion_bias=None):
    """``lr`` (N, 3, H, W) and ``feat`` (N, C, H, W) -> (N, 3, 4H, 4W).

    ``weights`` / ``biases``: upsample1, upsample2, conv_hr, conv_last (see `tail_parameters`). With
    ``fusion_weight`` (BasicVSR's ``fusion``), ``feat`` and ``feat_forward`` are fused first.
    """
    return torch.ops.vsr_fast.reconstruction_tail(
        lr, feat, feat_forward, fusion_weight, fusion_bias, list(weights), list(biases)
    )


def _fail(message):
    raise RuntimeError(f"{_OP}: {message}")


# c10's names, as the C++ messages print them
_DTYPE = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16"}


def _size(t):
    return "[" + ", ".join(str(int(s)) for s in t.shape) + "]"


def check_args(lr, feat, feat_forward, fusion_weight, fusion_bias, weights, biases):
    """The C++ checks (csrc/include/vsr_fast/reconstruction_tail.h) in the same order and words, for the
    fake kernel: a bad call fails alike under torch.compile / Meta."""
    if lr.dim() != 4 or lr.shape[1] != 3:
        _fail(f"expected lr [N, 3, H, W], got {_size(lr)}")
    if feat.dim() != 4 or feat.shape[0] != lr.shape[0] or feat.shape[2:] != lr.shape[2:]:
        _fail(f"expected feat [N, C, H, W] of lr's N, H, W, got lr {_size(lr)} and feat {_size(feat)}")
    if not lr.dtype.is_floating_point:
        _fail(f"expected a floating dtype, got {lr.dtype}")

    def same_kind(t, name):
        if t.dtype != lr.dtype or t.device != lr.device:
            _fail(
                f"{name} must have lr's dtype and device ({_DTYPE.get(lr.dtype, lr.dtype)} on {lr.device}), "
                f"got {_DTYPE.get(t.dtype, t.dtype)} on {t.device}"
            )

    same_kind(feat, "feat")
    channels = feat.shape[1]
    if feat_forward is not None:
        if fusion_weight is None:
            _fail("feat_forward needs fusion_weight (the 1x1 fusion conv)")
        if (
            feat_forward.dim() != 4
            or feat_forward.shape[0] != feat.shape[0]
            or feat_forward.shape[2:] != feat.shape[2:]
        ):
            _fail(
                f"expected feat_forward [N, C_f, H, W] of feat's N, H, W, got feat {_size(feat)} and "
                f"feat_forward {_size(feat_forward)}"
            )
        same_kind(feat_forward, "feat_forward")
        channels += feat_forward.shape[1]
    if (fusion_weight is None) != (fusion_bias is None):
        _fail("fusion_weight and fusion_bias come together")
    if fusion_weight is not None:
        fw = fusion_weight
        if fw.dim() != 4 or fw.shape[1] != channels or fw.shape[2] != 1 or fw.shape[3] != 1:
            _fail(f"fusion_weight must be [C_out, {channels}, 1, 1], got {_size(fw)}")
        if fusion_bias.dim() != 1 or fusion_bias.shape[0] != fw.shape[0]:
            _fail(f"fusion_bias must be [{fw.shape[0]}], got {_size(fusion_bias)}")
        same_kind(fw, "fusion_weight")
        same_kind(fusion_bias, "fusion_bias")
        channels = fw.shape[0]
    if len(weights) != 4 or len(biases) != 4:
        _fail(
            f"expected 4 weights and 4 biases (upsample1, upsample2, conv_hr, conv_last), got "
            f"{len(weights)} and {len(biases)}"
        )
    for i, (w, b) in enumerate(zip(weights, biases)):
        if w.dim() != 4 or w.shape[1] != channels or w.shape[2] != 3 or w.shape[3] != 3:
            _fail(f"weights[{i}] must be [C_out, {channels}, 3, 3], got {_size(w)}")
        out = w.shape[0]
        if i < 2 and not (out > 0 and out % 4 == 0):
            _fail(
                f"weights[{i}] feeds pixel_shuffle(2): its output channels must be a positive multiple "
                f"of 4, got {out}"
            )
        if i == 2 and out <= 0:
            _fail(f"weights[2] must have output channels, got {_size(w)}")
        if i == 3 and out != 3:
            _fail(f"weights[3] (conv_last) must have 3 output channels, got {_size(w)}")
        if b.dim() != 1 or b.shape[0] != out:
            _fail(f"biases[{i}] must be [{out}], got {_size(b)}")
        same_kind(w, f"weights[{i}]")
        same_kind(b, f"biases[{i}]")
        channels = out // 4 if i < 2 else out


@torch.library.register_fake(_OP)
def _fake(lr, feat, feat_forward, fusion_weight, fusion_bias, weights, biases):
    check_args(lr, feat, feat_forward, fusion_weight, fusion_bias, weights, biases)
    n, _, h, w = lr.shape
    return torch.empty(
        (n, 3, 4 * h, 4 * w), dtype=lr.dtype, device=lr.device, memory_format=suggest_memory_format(lr)
    )


register_recompute_autograd(_OP, reference.reconstruction_tail)
