"""vsr_fast::keyframe_fusion: IconVSR's keyframe refill fusion without the concatenation."""

import torch
from torch._prims_common import suggest_memory_format

from .. import reference
from ._checks import check_keyframe_fusion_args, require_tensor
from ._recompute import register_recompute_autograd

__all__ = ["keyframe_fusion"]


def keyframe_fusion(state, refill, weight, bias):
    """conv3x3(cat[state, refill], weight) + bias, no activation (IconVSR's backward_fusion /
    forward_fusion: propagated state first, refill feature second)."""
    for name, value in (("state", state), ("refill", refill), ("weight", weight), ("bias", bias)):
        require_tensor("vsr_fast::keyframe_fusion", name, value)
    return torch.ops.vsr_fast.keyframe_fusion(state, refill, weight, bias)


@torch.library.register_fake("vsr_fast::keyframe_fusion")
def _fake(state, refill, weight, bias):
    check_keyframe_fusion_args(state, refill, weight, bias)
    return torch.empty(
        (state.shape[0], weight.shape[0], state.shape[2], state.shape[3]),
        dtype=state.dtype,
        device=state.device,
        memory_format=suggest_memory_format(state),
    )


# by recomputation of the reference fusion: one convolution, cheap
register_recompute_autograd("vsr_fast::keyframe_fusion", reference.keyframe_fusion)
