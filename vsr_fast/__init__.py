"""vsr_fast: fast, checkpoint-compatible BasicVSR / IconVSR video super-resolution.

Importing the package loads the compiled operator library first (vsr_fast._C), then the Python side
of the operators.
"""
from ._extension import build_info
from . import ops
from .ops import flow_warp
from . import reference

__all__ = ["build_info", "flow_warp", "ops", "reference"]
__version__ = "0.1.0"
