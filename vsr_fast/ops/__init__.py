"""Python side of the vsr_fast operators: public wrappers, fake kernels, autograd formulas."""

from .flow_warp import flow_warp
from .keyframe_fusion import keyframe_fusion
from .propagation_step import propagation_step
from .residual_trunk import residual_trunk, trunk_parameters

__all__ = ["flow_warp", "keyframe_fusion", "residual_trunk", "propagation_step", "trunk_parameters"]
