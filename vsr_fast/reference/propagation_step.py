"""One recurrent step of BasicVSR / IconVSR: the spec of vsr_fast::propagation_step.

What ``BasicVSR.backward_step`` / ``forward_step`` and IconVSR's steps without a keyframe compute
(basicvsr.py, iconvsr.py): warp the previous state by the flow, concatenate ``[lr, feature, state]``
(``feature`` is IconVSR's backward feature in its forward branch) and run the trunk. The tests check
that it equals those methods exactly.

``warp`` is the reference `flow_warp` by default. vsr_fast's ops differentiate this function to get
their backward (by recomputation) and pass their own `vsr_fast.flow_warp` there, whose backward is
the fused kernel's rather than grid_sample's.
"""

import torch

from .flow_warp import flow_warp
from .residual_trunk import residual_trunk

__all__ = ["propagation_step", "step_input"]


def step_input(lr, feature, state, flow, channels, warp=flow_warp):
    """The trunk's input ``cat[lr, feature?, warp(state, flow)]``; ``state`` None is the zero state of
    the first frame (``channels`` wide), ``flow`` None leaves the state unwarped."""
    if state is None:
        state = lr.new_zeros(lr.shape[0], channels, lr.shape[2], lr.shape[3])
    elif flow is not None:
        state = warp(state, flow)
    return torch.cat([lr] + ([feature] if feature is not None else []) + [state], dim=1)


def propagation_step(lr, feature, state, flow, weights, biases, warp=flow_warp):
    """``residual_trunk(step_input(...))``; ``flow`` is [N, H, W, 2] in pixels, as `flow_warp` takes it."""
    return residual_trunk(step_input(lr, feature, state, flow, weights[0].shape[0], warp), weights, biases)
