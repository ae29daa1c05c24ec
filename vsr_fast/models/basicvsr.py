"""BasicVSR whose propagation steps are single vsr_fast::propagation_step calls.

The recurrence and flows are the reference's (so outputs match it); each step's warp + concat +
30-block trunk is one fused op, SPyNet warps with vsr_fast.flow_warp, and each output frame's fusion
and x4 tail is one vsr_fast::reconstruction_tail call.
"""

from .. import reference
from ..ops import propagation_step, reconstruction_tail
from ._fast import FastRecurrentMixin, pixel_flow
from .spynet import SPyNet

__all__ = ["BasicVSR"]


class BasicVSR(FastRecurrentMixin, reference.BasicVSR):
    """Drop-in for mmagic's BasicVSRNet: ``BasicVSR(mid_channels=64, num_blocks=30,
    spynet_pretrained=None)``, input (N, T, 3, H, W) RGB in [0, 1], output (N, T, 3, 4H, 4W).

    Precision (docs/design.md, "Precision policy"): ``model.to(torch.bfloat16)`` / ``model.half()``
    with input in that dtype runs every convolution in it (float32 accumulation) and keeps states and
    output in it, while flows and sampling positions stay float32. With the official REDS4 weights on
    real frames bf16 loses 0.025 dB PSNR against float32 and is 52 dB from the float32 output. On CPU,
    bf16 pays only with AVX512-BF16 / AMX (``vsr_fast.cpu_supports_bf16()``; the fused oneDNN path is
    taken there); elsewhere bf16 and fp16 are emulated, far slower than float32, and the model warns.
    """

    spynet_class = SPyNet

    def backward_step(self, lr, feat_prop, flow=None):
        return propagation_step(
            lr, None, feat_prop, pixel_flow(flow), *self.trunk_parameters(self.backward_resblocks)
        )

    def forward_step(self, lr, feat_prop, flow=None):
        return propagation_step(
            lr, None, feat_prop, pixel_flow(flow), *self.trunk_parameters(self.forward_resblocks)
        )

    def fuse_and_reconstruct(self, feat_backward, feat_forward, lr):
        weights, biases = self._parameters_of(self, self.tail_parameters)
        return reconstruction_tail(
            lr, feat_backward, weights, biases, feat_forward, self.fusion.weight, self.fusion.bias
        )
