"""IconVSR's keyframe refill fusion: the spec of vsr_fast::keyframe_fusion.

What ``IconVSR.backward_step`` / ``forward_step`` do at a keyframe (iconvsr.py): a 3x3 convolution,
no activation, over the propagated state and the refill feature, state first.
"""

import torch
import torch.nn.functional as F

__all__ = ["keyframe_fusion"]


def keyframe_fusion(state, refill, weight, bias):
    """``conv3x3(cat[state, refill], weight) + bias``, stride 1, zero padding 1."""
    return F.conv2d(torch.cat([state, refill], 1), weight, bias, padding=1)
