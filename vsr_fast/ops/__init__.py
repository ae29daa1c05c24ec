"""Python side of the vsr_fast operators: public wrappers, fake kernels, autograd formulas."""

from .flow_warp import flow_warp
from .keyframe_fusion import keyframe_fusion
from .modulated_deform_conv import modulated_deform_conv
from .propagation_step import propagation_step
from .reconstruction_tail import reconstruction_tail
from .residual_trunk import residual_trunk
from .spynet_basic_module import spynet_basic_module

__all__ = [
    "flow_warp",
    "keyframe_fusion",
    "modulated_deform_conv",
    "residual_trunk",
    "propagation_step",
    "reconstruction_tail",
    "spynet_basic_module",
]
