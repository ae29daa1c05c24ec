"""SPyNet optical flow as used by BasicVSR/IconVSR (mmagic's SPyNet).

``spynet(ref, supp)`` is the flow from ``ref`` to ``supp``: ``flow_warp(supp, flow)`` aligns ``supp``
onto ``ref``. Channel 0 is the horizontal displacement in pixels, channel 1 the vertical one.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import ConvModule, load_pretrained
from .flow_warp import flow_warp
from .spynet_basic_module import spynet_basic_module

__all__ = ["SPyNet", "SPyNetBasicModule"]

# ImageNet statistics on RGB in [0, 1]; the sintel-final weights were trained with them
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class SPyNetBasicModule(nn.Module):
    """One pyramid level: five 7x7 convs 8-32-64-32-16-2 with ReLU between them.

    The layers hold the parameters (under mmagic's key names); the maths is `spynet_basic_module`'s,
    the spec of the op of that name."""

    def __init__(self):
        super().__init__()
        self.basic_module = nn.Sequential(
            ConvModule(8, 32, 7, 1, 3, act="relu"),
            ConvModule(32, 64, 7, 1, 3, act="relu"),
            ConvModule(64, 32, 7, 1, 3, act="relu"),
            ConvModule(32, 16, 7, 1, 3, act="relu"),
            ConvModule(16, 2, 7, 1, 3, act=None),
        )

    def conv_parameters(self):
        """(weights, biases) of the five convolutions, as `spynet_basic_module` takes them."""
        convs = [layer.conv for layer in self.basic_module]
        return [conv.weight for conv in convs], [conv.bias for conv in convs]

    def forward(self, tensor_input):
        """(N, 8, H, W) = cat[ref, warped supp, upsampled flow] -> flow residue (N, 2, H, W)."""
        return spynet_basic_module(tensor_input, *self.conv_parameters())


class SPyNet(nn.Module):
    """Six-level spatial pyramid flow network; ``basic_module[0]`` is the coarsest (1/32) level."""

    basic_module_class = SPyNetBasicModule  # the fast SPyNet's levels run vsr_fast's op

    def __init__(self, pretrained=None):
        super().__init__()
        self.basic_module = nn.ModuleList([self.basic_module_class() for _ in range(6)])
        # mean/std are constants; standalone SPyNet files do not contain them (the official code
        # registers them after loading), vsr_fast.checkpoint treats them as optional
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))
        load_pretrained(self, pretrained, "SPyNet")

    @staticmethod
    def warp(image, flow):
        """The pyramid's warp: ``flow`` (N, 2, H, W), border padding (not zeros as in propagation)."""
        return flow_warp(image, flow.permute(0, 2, 3, 1), padding_mode="border")

    def compute_flow(self, ref, supp):
        """Flow ref -> supp for inputs whose sizes are already multiples of 32."""
        n, _, h, w = ref.shape
        ref = [(ref - self.mean) / self.std]
        supp = [(supp - self.mean) / self.std]
        for _ in range(5):
            ref.append(F.avg_pool2d(ref[-1], kernel_size=2, stride=2, count_include_pad=False))
            supp.append(F.avg_pool2d(supp[-1], kernel_size=2, stride=2, count_include_pad=False))
        ref = ref[::-1]
        supp = supp[::-1]

        # Flows are positions: under float16 / bfloat16 they are summed in float32 and only the
        # convolutions run in the low precision (docs/design.md, "Precision policy"); bf16 keeps 8
        # bits, 0.125 px at 16-32 px of motion. float32 and float64 are unchanged.
        dtype = ref[0].dtype
        flow_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        flow = ref[0].new_zeros(n, 2, h // 32, w // 32, dtype=flow_dtype)
        for level in range(len(ref)):
            if level == 0:
                flow_up = flow
            else:
                # align_corners=True here (unlike the resizes in forward), and values double with the grid
                flow_up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            warped = self.warp(supp[level], flow_up)
            residue = self.basic_module[level](torch.cat([ref[level], warped, flow_up.to(dtype)], 1))
            flow = flow_up + residue.to(flow_dtype)
        return flow

    def forward(self, ref, supp):
        """Flow from ``ref`` to ``supp``, both (N, 3, H, W) RGB in [0, 1] -> (N, 2, H, W), in the
        inputs' dtype, float32 for float16 / bfloat16 inputs."""
        if ref.dim() != 4 or ref.shape != supp.shape or ref.size(1) != 3:
            raise ValueError(
                f"SPyNet: expected ref and supp of the same shape (N, 3, H, W), got "
                f"{list(ref.shape)} and {list(supp.shape)}"
            )
        h, w = ref.shape[2:4]
        w_up = w if w % 32 == 0 else 32 * (w // 32 + 1)
        h_up = h if h % 32 == 0 else 32 * (h // 32 + 1)
        # an identity when the size is already a multiple of 32; kept unconditional like the original
        ref = F.interpolate(ref, size=(h_up, w_up), mode="bilinear", align_corners=False)
        supp = F.interpolate(supp, size=(h_up, w_up), mode="bilinear", align_corners=False)
        flow = F.interpolate(self.compute_flow(ref, supp), size=(h, w), mode="bilinear", align_corners=False)
        flow[:, 0, :, :] *= float(w) / float(w_up)
        flow[:, 1, :, :] *= float(h) / float(h_up)
        return flow
