"""Building blocks shared by the reference networks (mmagic / mmcv's).

Attribute names follow mmagic so that state-dict keys match the official lists
(tests/data/keys/mmagic_*.tsv) exactly. The initialisers reproduce mmagic's (they only matter when
training from scratch: every test and every user loads weights).
"""

import math

import torch.nn as nn
import torch.nn.functional as F

# the one layer below the reference: checkpoint reads files and knows key names, nothing of vsr_fast
from ..checkpoint import load_checkpoint

__all__ = [
    "ConvModule",
    "ResidualBlockNoBN",
    "ResidualBlocksWithInputConv",
    "PixelShufflePack",
    "default_init_weights",
    "make_layer",
    "lrelu",
]

# One slope for the whole family: BasicVSR/IconVSR/EDVR never use 0.2.
LRELU_SLOPE = 0.1


def lrelu(inplace=True):
    return nn.LeakyReLU(negative_slope=LRELU_SLOPE, inplace=inplace)


def _kaiming_(conv, a=0.0, nonlinearity="relu"):
    nn.init.kaiming_normal_(conv.weight, a=a, mode="fan_in", nonlinearity=nonlinearity)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def default_init_weights(module, scale=1.0):
    """mmagic's ``default_init_weights``: Kaiming-normal (fan_in, ReLU gain) times ``scale``, bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _kaiming_(m)
            m.weight.data.mul_(scale)


def make_layer(block, num_blocks, **kwargs):
    return nn.Sequential(*[block(**kwargs) for _ in range(num_blocks)])


class ConvModule(nn.Module):
    """The subset of mmcv's ConvModule the official code uses: conv (in ``.conv``) + optional activation.

    The extra ``.conv`` level exists only so that mmagic key names (``...feat_l2_conv1.conv.weight``)
    load unchanged; BasicSR's flat names are handled by `vsr_fast.checkpoint`.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, act="lrelu"):
        super().__init__()
        if act not in ("lrelu", "relu", None):
            raise ValueError(f"ConvModule: act must be 'lrelu', 'relu' or None, got {act!r}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        if act == "lrelu":
            self.activate = lrelu()
        elif act == "relu":
            self.activate = nn.ReLU(inplace=True)
        else:
            self.activate = None
        # mmcv initialises with the gain of the activation that follows the conv
        if act == "lrelu":
            _kaiming_(self.conv, a=LRELU_SLOPE, nonlinearity="leaky_relu")
        else:
            _kaiming_(self.conv)

    def forward(self, x):
        x = self.conv(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class ResidualBlockNoBN(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, added to the input (scaled by ``res_scale``)."""

    def __init__(self, mid_channels=64, res_scale=1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        # mmagic scales the init down by 10 only for unscaled blocks, to keep deep residual
        # chains near identity at the start of training
        if res_scale == 1.0:
            default_init_weights(self, 0.1)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class ResidualBlocksWithInputConv(nn.Module):
    """Propagation trunk: conv3x3 (in -> out) + LeakyReLU(0.1) + ``num_blocks`` ResidualBlockNoBN.

    ``main`` has exactly three entries so that keys are ``main.0.*`` and ``main.2.{k}.conv{1,2}.*``.
    """

    def __init__(self, in_channels, out_channels=64, num_blocks=30):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=True),
            lrelu(),
            make_layer(ResidualBlockNoBN, num_blocks, mid_channels=out_channels),
        )

    def forward(self, feat):
        return self.main(feat)

    def trunk_parameters(self):
        """(weights, biases) lists in the order vsr_fast's trunk ops take them: the input conv, then
        conv1 / conv2 of each block (the ``main.0`` / ``main.2.k.conv{1,2}`` key layout)."""
        weights, biases = [self.main[0].weight], [self.main[0].bias]
        for block in self.main[2]:
            weights += [block.conv1.weight, block.conv2.weight]
            biases += [block.conv1.bias, block.conv2.bias]
        return weights, biases


class PixelShufflePack(nn.Module):
    """conv (in -> out * scale^2) followed by ``F.pixel_shuffle`` (PyTorch channel order)."""

    def __init__(self, in_channels, out_channels, scale_factor, upsample_kernel):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scale_factor = scale_factor
        self.upsample_kernel = upsample_kernel
        self.upsample_conv = nn.Conv2d(
            in_channels,
            out_channels * scale_factor * scale_factor,
            upsample_kernel,
            padding=(upsample_kernel - 1) // 2,
        )
        default_init_weights(self, 1)

    def forward(self, x):
        return F.pixel_shuffle(self.upsample_conv(x), self.scale_factor)


def _uniform_fan_in_(weight, bias=None):
    """mmcv's ModulatedDeformConv2d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias 0."""
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    stdv = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(weight, -stdv, stdv)
    if bias is not None:
        nn.init.zeros_(bias)


def load_pretrained(module, pretrained, what):
    """Load ``pretrained`` (a local path) into ``module`` with `vsr_fast.checkpoint`, strictly.

    mmagic accepts URLs here and downloads them; the reference never touches the network, and
    `vsr_fast.checkpoint` rejects URL strings with an error saying so.
    """
    if pretrained is None:
        return
    if not isinstance(pretrained, (str, bytes)) and not hasattr(pretrained, "__fspath__"):
        raise TypeError(f"{what}: pretrained must be a local path or None, got {type(pretrained).__name__}")
    load_checkpoint(module, pretrained, strict=True)
