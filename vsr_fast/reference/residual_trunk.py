"""BasicVSR's propagation trunk as a function of its weights: the spec of vsr_fast::residual_trunk.

Layer for layer what `ResidualBlocksWithInputConv` computes (blocks.py): conv3x3 + LeakyReLU(0.1),
then per residual block ``h + conv3x3(relu(conv3x3(h)))``, all stride 1, zero padding 1, with bias.
It takes the weights as lists (input conv, then conv1 / conv2 of each block: the order of
`ResidualBlocksWithInputConv.trunk_parameters`) so that any tensors can be pushed through it; the
tests check that it equals the module exactly.
"""

import torch.nn.functional as F

from .blocks import LRELU_SLOPE

__all__ = ["residual_trunk"]


def residual_trunk(x, weights, biases):
    """``ResidualBlocksWithInputConv`` on ``x`` [N, C_in, H, W] with ``1 + 2 * num_blocks`` weights."""
    h = F.leaky_relu(F.conv2d(x, weights[0], biases[0], padding=1), LRELU_SLOPE)
    for k in range(1, len(weights), 2):
        branch = F.relu(F.conv2d(h, weights[k], biases[k], padding=1))
        h = h + F.conv2d(branch, weights[k + 1], biases[k + 1], padding=1)
    return h
