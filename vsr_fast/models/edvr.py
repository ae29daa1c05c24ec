"""IconVSR's EDVR refill extractor with PCD alignment's deformable convolutions through vsr_fast's op.

Same modules, parameters and state-dict keys as the reference (vsr_fast.reference.edvr); only each
ModulatedDCNPack's deformable convolution runs as one vsr_fast::modulated_deform_conv call instead of
the reference's corner gathers.
"""

import torch

from .. import reference
from ..ops import modulated_deform_conv

__all__ = ["ModulatedDCNPack", "PCDAlignment", "EDVRFeatureExtractor"]


class ModulatedDCNPack(reference.ModulatedDCNPack):
    def forward(self, x, extra_feat):
        out = self.conv_offset(extra_feat)
        # conv_offset's thirds are (y/x offsets, y/x offsets, mask logits): the first two thirds,
        # concatenated in the reference, are already one contiguous channel range, read in place
        offsets = 2 * self.deform_groups * self.kernel_size[0] * self.kernel_size[1]
        mask = torch.sigmoid(out[:, offsets:])
        return modulated_deform_conv(
            x,
            out[:, :offsets],
            mask,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            1,
            self.deform_groups,
        )


class PCDAlignment(reference.PCDAlignment):
    dcn_pack_class = ModulatedDCNPack


class EDVRFeatureExtractor(reference.EDVRFeatureExtractor):
    pcd_alignment_class = PCDAlignment
