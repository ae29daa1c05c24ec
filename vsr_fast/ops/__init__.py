"""Python side of the vsr_fast operators: public wrappers, fake kernels, autograd formulas."""
from .flow_warp import flow_warp

__all__ = ["flow_warp"]
