"""vsr_fast: fast, checkpoint-compatible BasicVSR / IconVSR video super-resolution.

Importing the package loads the compiled operator library first (vsr_fast._C), then the Python side
of the operators.
"""

# first: loading vsr_fast._C defines the schemas that the ops' Python side registers against
from ._extension import build_info

# isort: split
from . import checkpoint, hardware, inference, models, ops, reference
from .acceleration import accelerate
from .hardware import cpu_supports_bf16
from .inference import upscale
from .models import BasicVSR, IconVSR, SPyNet
from .ops import (
    flow_warp,
    keyframe_fusion,
    modulated_deform_conv,
    propagation_step,
    reconstruction_tail,
    residual_trunk,
    spynet_basic_module,
)

__all__ = [
    "BasicVSR",
    "IconVSR",
    "accelerate",
    "SPyNet",
    "build_info",
    "flow_warp",
    "keyframe_fusion",
    "reconstruction_tail",
    "modulated_deform_conv",
    "residual_trunk",
    "propagation_step",
    "spynet_basic_module",
    "checkpoint",
    "hardware",
    "inference",
    "models",
    "ops",
    "reference",
    "cpu_supports_bf16",
    "upscale",
]
__version__ = "0.1.0"
