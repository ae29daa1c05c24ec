"""BasicVSR / IconVSR's x4 reconstruction tail as a function: the spec of vsr_fast::reconstruction_tail.

What ``BasicVSR.fuse`` followed by ``reconstruct`` computes (basicvsr.py; IconVSR's ``reconstruct``
alone, it has no fusion conv), with the module parameters as arguments so that any tensors can be
pushed through it; tests/test_reconstruction_tail.py checks it equals the model methods exactly.
"""

import torch
import torch.nn.functional as F

from .blocks import LRELU_SLOPE

__all__ = ["reconstruction_tail"]


def reconstruction_tail(lr, feat, feat_forward, fusion_weight, fusion_bias, weights, biases):
    """``lr`` (N, 3, H, W), ``feat`` (N, C, H, W) -> (N, 3, 4H, 4W).

    With ``fusion_weight``: ``feat = LeakyReLU(conv1x1(cat[feat, feat_forward?]))`` first (BasicVSR's
    ``fuse``). ``weights`` / ``biases``: upsample1, upsample2 (each conv3x3 + pixel_shuffle(2) +
    LeakyReLU), conv_hr (+ LeakyReLU), conv_last, whose output is added to the bilinear x4 upsampling
    of ``lr``.
    """
    if fusion_weight is not None:
        x = feat if feat_forward is None else torch.cat([feat, feat_forward], 1)
        feat = F.leaky_relu(F.conv2d(x, fusion_weight, fusion_bias), LRELU_SLOPE)
    up1, up2, hr, last = weights
    b_up1, b_up2, b_hr, b_last = biases
    out = F.leaky_relu(F.pixel_shuffle(F.conv2d(feat, up1, b_up1, padding=1), 2), LRELU_SLOPE)
    out = F.leaky_relu(F.pixel_shuffle(F.conv2d(out, up2, b_up2, padding=1), 2), LRELU_SLOPE)
    out = F.leaky_relu(F.conv2d(out, hr, b_hr, padding=1), LRELU_SLOPE)
    out = F.conv2d(out, last, b_last, padding=1)
    return out + F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
