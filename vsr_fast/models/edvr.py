"""IconVSR's EDVR refill extractor with PCD alignment's deformable convolutions through vsr_fast's op.

Same modules, parameters and state-dict keys as the reference (vsr_fast.reference.edvr); only each
ModulatedDCNPack's deformable convolution runs as one vsr_fast::modulated_deform_conv call instead of
the reference's corner gathers.
"""

from .. import reference
from ..ops import modulated_deform_conv

__all__ = ["ModulatedDCNPack", "PCDAlignment", "EDVRFeatureExtractor"]


class ModulatedDCNPack(reference.ModulatedDCNPack):
    deform_conv = staticmethod(modulated_deform_conv)


class PCDAlignment(reference.PCDAlignment):
    dcn_pack_class = ModulatedDCNPack


class EDVRFeatureExtractor(reference.EDVRFeatureExtractor):
    pcd_alignment_class = PCDAlignment
