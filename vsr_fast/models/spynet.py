"""SPyNet with each pyramid level as one vsr_fast::spynet_basic_module call and its pyramid warps
through vsr_fast.flow_warp (border padding, fp32 coordinates)."""

from .. import reference
from ..ops import flow_warp, spynet_basic_module

__all__ = ["SPyNet", "SPyNetBasicModule"]


class SPyNetBasicModule(reference.SPyNetBasicModule):
    """The reference level's layers and keys; its five convolutions run as one op."""

    def forward(self, tensor_input):
        return spynet_basic_module(tensor_input, *self.conv_parameters())


class SPyNet(reference.SPyNet):
    basic_module_class = SPyNetBasicModule

    @staticmethod
    def warp(image, flow):
        return flow_warp(image, flow.permute(0, 2, 3, 1), padding_mode="border")
