"""One SPyNet pyramid level (its basic module) as a function: the spec of vsr_fast::spynet_basic_module.

The reference `SPyNetBasicModule` runs through this function itself, so the module and the spec are one
code path; the module parameters are arguments so that any tensors can be pushed through it.
"""

import torch.nn.functional as F

__all__ = ["spynet_basic_module"]


def spynet_basic_module(x, weights, biases):
    """``x`` (N, 8, H, W) = cat[ref, warped supp, upsampled flow] -> flow residue (N, 2, H, W).

    ``weights`` / ``biases``: the five 7x7 convolutions (8 -> 32 -> 64 -> 32 -> 16 -> 2 channels in the
    official network), stride 1, padding 3, a ReLU after each but the last.
    """
    last = len(weights) - 1
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        x = F.conv2d(x, weight, bias, padding=3)
        if i < last:
            x = F.relu(x, inplace=True)
    return x
