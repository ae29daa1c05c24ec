"""vsr_fast::spynet_basic_module: one SPyNet pyramid level (five 7x7 convolutions, ReLU between them) as
one op. Backward is by recomputation of the spec (`vsr_fast.reference.spynet_basic_module`): only the
inputs are saved."""

import torch
from torch._prims_common import suggest_memory_format

from .. import reference
from ._checks import check_spynet_basic_module_args, require_tensor, require_tensors
from ._recompute import register_recompute_autograd

__all__ = ["spynet_basic_module"]

_OP = "vsr_fast::spynet_basic_module"


def spynet_basic_module(x, weights, biases):
    """``x`` (N, 8, H, W) = cat[ref, warped supp, upsampled flow] -> flow residue (N, 2, H, W).

    ``weights`` / ``biases``: the five convolutions' (``SPyNetBasicModule.conv_parameters()``). The
    output has ``x``'s memory format.
    """
    require_tensor(_OP, "x", x)
    return torch.ops.vsr_fast.spynet_basic_module(
        x, require_tensors(_OP, "weights", weights), require_tensors(_OP, "biases", biases)
    )


@torch.library.register_fake(_OP)
def _fake(x, weights, biases):
    check_spynet_basic_module_args(x, weights, biases)
    n, _, h, w = x.shape
    return torch.empty(
        (n, weights[-1].shape[0], h, w),
        dtype=x.dtype,
        device=x.device,
        memory_format=suggest_memory_format(x),
    )


register_recompute_autograd(_OP, reference.spynet_basic_module)
