"""vsr_fast::propagation_step: one recurrent step of BasicVSR / IconVSR (warp, concat, trunk) as one op.

Backward is by recomputation, as for residual_trunk: only the op's inputs are saved, and the backward
pass re-runs the step with plain ATen operators (and flow_warp, which has its own backward) under
autograd.
"""
import torch

from ._recompute import recompute_backward, setup_recompute
from .flow_warp import flow_warp
from .residual_trunk import output_like, trunk_eager

__all__ = ["propagation_step"]


def propagation_step(lr, feature, state, flow, weights, biases):
    """trunk(cat[lr, feature, flow_warp(state, flow)]) in one op. feature may be None (BasicVSR);
    state None means a zero state (first frame); flow None means no warp."""
    return torch.ops.vsr_fast.propagation_step(lr, feature, state, flow, list(weights), list(biases))


def step_input_eager(lr, feature, state, flow, channels):
    if state is None:
        state = lr.new_zeros(lr.shape[0], channels, lr.shape[2], lr.shape[3])
    elif flow is not None:
        state = flow_warp(state, flow)
    parts = [lr] + ([feature] if feature is not None else []) + [state]
    return torch.cat(parts, dim=1)


@torch.library.register_fake("vsr_fast::propagation_step")
def _propagation_step_fake(lr, feature, state, flow, weights, biases):
    return output_like(lr, weights[0].shape[0])


def step_eager(lr, feature, state, flow, weights, biases):
    """propagation_step in plain ATen ops (flow_warp is the op, which has its own backward)."""
    return trunk_eager(step_input_eager(lr, feature, state, flow, weights[0].shape[0]), weights, biases)


def _setup(ctx, inputs, output):
    setup_recompute(ctx, inputs)


def _step_backward(ctx, grad_out):
    return recompute_backward(ctx, step_eager, grad_out)


torch.library.register_autograd("vsr_fast::propagation_step", _step_backward, setup_context=_setup)
