"""IconVSR whose propagation steps run through vsr_fast's fused ops.

Steps without a keyframe are one propagation_step call (warp + concat + trunk); keyframe steps warp,
fuse the refill feature with keyframe_fusion (no concat) and run the trunk. The EDVR refill extractor's
PCD alignment runs its deformable convolutions through vsr_fast::modulated_deform_conv, and each output
frame's x4 tail is one vsr_fast::reconstruction_tail call.
"""

from .. import reference
from ..ops import keyframe_fusion, propagation_step
from ._fast import FastRecurrentMixin, pixel_flow
from .edvr import EDVRFeatureExtractor
from .spynet import SPyNet

__all__ = ["IconVSR"]


class IconVSR(FastRecurrentMixin, reference.IconVSR):
    """Drop-in for mmagic's IconVSRNet (same constructor arguments and state-dict keys).

    Precision: as `vsr_fast.BasicVSR` (docs/design.md, "Precision policy"): convolutions in the
    model's dtype, flows and sampling positions in float32; the EDVR refill's DCN offsets and masks are
    outputs of convolutions, so they carry that dtype's rounding (no official IconVSR weights here to
    measure what that costs). Warns on a CPU without hardware for the dtype.
    """

    spynet_class = SPyNet
    edvr_class = EDVRFeatureExtractor

    def _step(self, lr, feat_backward, feat_prop, flow, feat_refill, fusion, trunk):
        parameters = self.trunk_parameters(trunk)
        if feat_refill is None:
            return propagation_step(lr, feat_backward, feat_prop, pixel_flow(flow), *parameters)
        if flow is not None:
            feat_prop = self.warp(feat_prop, flow)
        # propagated state first, refill second, as in the reference
        state = keyframe_fusion(feat_prop, feat_refill, fusion.weight, fusion.bias)
        return propagation_step(lr, feat_backward, state, None, *parameters)

    def backward_step(self, lr, feat_prop, flow=None, feat_refill=None):
        return self._step(
            lr, None, feat_prop, flow, feat_refill, self.backward_fusion, self.backward_resblocks
        )

    def forward_step(self, lr, feat_backward, feat_prop, flow=None, feat_refill=None):
        return self._step(
            lr, feat_backward, feat_prop, flow, feat_refill, self.forward_fusion, self.forward_resblocks
        )
