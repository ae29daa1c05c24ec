"""vsr_fast::residual_trunk: BasicVSR's propagation trunk as one op.

Backward is by recomputation: only the op's inputs are saved, and the backward pass differentiates
the reference trunk (`vsr_fast.reference.residual_trunk`, plain ATen operators) re-run under autograd,
so only one trunk's activations are alive at a time during training.
"""

import torch
from torch._prims_common import suggest_memory_format

from .. import reference
from ._checks import check_residual_trunk_args, require_tensor, require_tensors
from ._recompute import register_recompute_autograd

__all__ = ["residual_trunk"]


def residual_trunk(x, weights, biases):
    """conv3x3 + LeakyReLU(0.1), then ResidualBlockNoBN (conv3x3-ReLU-conv3x3 + identity) per pair of
    weights. weights/biases: [input conv, block0.conv1, block0.conv2, block1.conv1, ...]."""
    op = "vsr_fast::residual_trunk"
    require_tensor(op, "x", x)
    return torch.ops.vsr_fast.residual_trunk(
        x, require_tensors(op, "weights", weights), require_tensors(op, "biases", biases)
    )


def output_like(x, channels):
    return torch.empty(
        (x.shape[0], channels, x.shape[2], x.shape[3]),
        dtype=x.dtype,
        device=x.device,
        memory_format=suggest_memory_format(x),
    )


@torch.library.register_fake("vsr_fast::residual_trunk")
def _residual_trunk_fake(x, weights, biases):
    check_residual_trunk_args(x, weights, biases)
    return output_like(x, weights[0].shape[0])


register_recompute_autograd("vsr_fast::residual_trunk", reference.residual_trunk)
