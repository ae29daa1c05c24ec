"""vsr_fast::propagation_step: one recurrent step of BasicVSR / IconVSR (warp, concat, trunk) as one op.

Backward is by recomputation, as for residual_trunk: the backward pass differentiates the reference
step (`vsr_fast.reference.propagation_step`) re-run under autograd, with vsr_fast's own flow_warp as
its warp. That is the warp this op's forward fuses (for float16/bfloat16 it samples at float32
positions, where the reference's grid_sample gets a grid rounded to the storage dtype), so the
gradient is the one of the function the forward computed. The warp is a small part of the step's
cost either way (docs/design.md, "Backward by recomputation").
"""

import functools

import torch

from .. import reference
from ._checks import check_propagation_step_args, require_tensor, require_tensors
from ._recompute import register_recompute_autograd
from .flow_warp import flow_warp
from .residual_trunk import output_like

__all__ = ["propagation_step"]


def propagation_step(lr, feature, state, flow, weights, biases):
    """trunk(cat[lr, feature, flow_warp(state, flow)]) in one op. feature may be None (BasicVSR);
    state None means a zero state (first frame); flow None means no warp."""
    op = "vsr_fast::propagation_step"
    require_tensor(op, "lr", lr)
    for name, value in (("feature", feature), ("state", state), ("flow", flow)):
        require_tensor(op, name, value, optional=True)
    return torch.ops.vsr_fast.propagation_step(
        lr,
        feature,
        state,
        flow,
        require_tensors(op, "weights", weights),
        require_tensors(op, "biases", biases),
    )


@torch.library.register_fake("vsr_fast::propagation_step")
def _propagation_step_fake(lr, feature, state, flow, weights, biases):
    return output_like(lr, check_propagation_step_args(lr, feature, state, flow, weights, biases))


_step_with_fast_warp = functools.partial(reference.propagation_step, warp=flow_warp)


register_recompute_autograd("vsr_fast::propagation_step", _step_with_fast_warp)
