"""SPyNet with its pyramid warps through vsr_fast.flow_warp (border padding, fp32 coordinates)."""

from .. import reference
from ..ops import flow_warp

__all__ = ["SPyNet"]


class SPyNet(reference.SPyNet):
    @staticmethod
    def warp(image, flow):
        return flow_warp(image, flow.permute(0, 2, 3, 1), padding_mode="border")
