"""Pure-PyTorch reference implementations: the spec every fast path is tested against.

Imports nothing from the rest of vsr_fast.
"""
from .flow_warp import flow_warp

__all__ = ["flow_warp"]
