"""Pure-PyTorch reference implementations: the spec every fast path is tested against.

Imports nothing from the rest of vsr_fast but `vsr_fast.checkpoint` (the layer below it, which
depends on nothing of vsr_fast), for the models' ``*_pretrained`` files; docs/design.md, "Layers".
"""

from .basicvsr import BasicVSR
from .blocks import ConvModule, PixelShufflePack, ResidualBlockNoBN, ResidualBlocksWithInputConv
from .dcn import ModulatedDCNPack, modulated_deform_conv2d
from .edvr import EDVRFeatureExtractor, PCDAlignment, TSAFusion
from .flow_warp import flow_warp
from .iconvsr import IconVSR
from .keyframe_fusion import keyframe_fusion
from .propagation_step import propagation_step
from .reconstruction_tail import reconstruction_tail
from .residual_trunk import residual_trunk
from .spynet import SPyNet, SPyNetBasicModule
from .spynet_basic_module import spynet_basic_module

__all__ = [
    "flow_warp",
    "residual_trunk",
    "propagation_step",
    "keyframe_fusion",
    "reconstruction_tail",
    "spynet_basic_module",
    "SPyNet",
    "SPyNetBasicModule",
    "BasicVSR",
    "IconVSR",
    "EDVRFeatureExtractor",
    "PCDAlignment",
    "TSAFusion",
    "ModulatedDCNPack",
    "modulated_deform_conv2d",
    "ResidualBlockNoBN",
    "ResidualBlocksWithInputConv",
    "PixelShufflePack",
    "ConvModule",
]
