"""BasicVSR whose propagation steps are single vsr_fast::propagation_step calls.

The recurrence, flows and reconstruction tail are the reference's (so outputs match it); each step's
warp + concat + 30-block trunk is one fused op, SPyNet warps with vsr_fast.flow_warp, and the x4 tail
runs in channels_last.
"""

import torch

from .. import reference
from ..ops import flow_warp, propagation_step, trunk_parameters
from .spynet import SPyNet

__all__ = ["BasicVSR", "FastTailMixin", "pixel_flow"]


def pixel_flow(flow):
    """(N, 2, H, W) flow as the ops take it, (N, H, W, 2); None stays None."""
    return None if flow is None else flow.permute(0, 2, 3, 1)


class FastTailMixin:
    """The x4 tail in channels_last, where ATen's CPU convolutions are faster (measured in
    benchmarks/results/cpu_design_measurements.md). The output is handed back contiguous."""

    def reconstruct(self, feat, lr):
        return super().reconstruct(feat.contiguous(memory_format=torch.channels_last), lr).contiguous()


class BasicVSR(FastTailMixin, reference.BasicVSR):
    """Drop-in for mmagic's BasicVSRNet: ``BasicVSR(mid_channels=64, num_blocks=30,
    spynet_pretrained=None)``, input (N, T, 3, H, W) RGB in [0, 1], output (N, T, 3, 4H, 4W)."""

    spynet_class = SPyNet

    @staticmethod
    def warp(feat, flow):
        return flow_warp(feat, flow.permute(0, 2, 3, 1))

    def backward_step(self, lr, feat_prop, flow=None):
        return propagation_step(
            lr, None, feat_prop, pixel_flow(flow), *trunk_parameters(self.backward_resblocks)
        )

    def forward_step(self, lr, feat_prop, flow=None):
        return propagation_step(
            lr, None, feat_prop, pixel_flow(flow), *trunk_parameters(self.forward_resblocks)
        )
