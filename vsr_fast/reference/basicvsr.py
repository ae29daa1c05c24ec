"""BasicVSR (mmagic's BasicVSRNet): SPyNet flows + bidirectional recurrent propagation + x4 tail.

The loop is written as small public methods (``compute_flow`` / ``pair_flows``, ``backward_step``,
``forward_step``, ``fuse``, ``reconstruct``, ``fuse_and_reconstruct``: docs/design.md, "Step hooks")
so that the fast models and the long-video engine can reuse or replace one piece at a time and be
compared against the rest of this reference.
"""

import warnings

import torch
import torch.nn as nn

from .blocks import PixelShufflePack, ResidualBlocksWithInputConv, lrelu
from .flow_warp import flow_warp
from .spynet import SPyNet

__all__ = ["BasicVSR", "check_video_input"]

# below this the official models were never trained; mmediting 0.x asserted, mmagic 1.x warns
MIN_RECOMMENDED_SIZE = 64


def check_video_input(lrs, name):
    if not torch.is_tensor(lrs) or lrs.dim() != 5 or lrs.size(2) != 3:
        shape = list(lrs.shape) if torch.is_tensor(lrs) else type(lrs).__name__
        raise ValueError(f"{name}: expected RGB frames (N, T, 3, H, W), got {shape}")
    if lrs.size(1) < 1 or lrs.size(3) < 1 or lrs.size(4) < 1:
        raise ValueError(f"{name}: empty input {list(lrs.shape)}")


class _RecurrentVSRBase(nn.Module):
    """What BasicVSR and IconVSR share: mirror detection, flows, the small-input warning, the tail."""

    # the flow network's class; a subclass (vsr_fast.models) may substitute a faster one
    spynet_class = SPyNet

    def _build_tail(self, mid_channels):
        self.upsample1 = PixelShufflePack(mid_channels, mid_channels, 2, upsample_kernel=3)
        # the last layers are 64 channels whatever mid_channels is (official comment and code)
        self.upsample2 = PixelShufflePack(mid_channels, 64, 2, upsample_kernel=3)
        self.conv_hr = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv_last = nn.Conv2d(64, 3, 3, 1, 1)
        # bilinear, not bicubic: the residual is learnt on top of this base
        self.img_upsample = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)
        self.lrelu = lrelu()

    def _warn_if_small(self, h, w):
        if (h < MIN_RECOMMENDED_SIZE or w < MIN_RECOMMENDED_SIZE) and not self._warned_small_input:
            self._warned_small_input = True
            warnings.warn(
                f"{type(self).__name__}: the input is {h}x{w}; the model is designed for inputs of at "
                f"least {MIN_RECOMMENDED_SIZE}x{MIN_RECOMMENDED_SIZE} (SPyNet's pyramid gets too coarse "
                f"below that), results may be poor",
                UserWarning,
                stacklevel=3,
            )

    def check_if_mirror_extended(self, lrs):
        """Set ``is_mirror_extended``: T even and the second half is exactly the first half reversed.

        Exact equality on purpose: then the forward flows equal backward flows already computed.
        """
        self.is_mirror_extended = False
        if lrs.size(1) % 2 == 0:
            lrs_1, lrs_2 = torch.chunk(lrs, 2, dim=1)
            if torch.norm(lrs_1 - lrs_2.flip(1)) == 0:
                self.is_mirror_extended = True
        return self.is_mirror_extended

    def compute_flow(self, lrs):
        """Return ``(flows_forward, flows_backward)``, each (N, T-1, 2, H, W).

        ``flows_backward[:, i]`` = spynet(x_i, x_{i+1}) (warps the state from i+1 onto i);
        ``flows_forward[:, i]`` = spynet(x_{i+1}, x_i) (warps the state from i onto i+1). It is None
        when ``is_mirror_extended`` is set (call ``check_if_mirror_extended`` first).
        """
        n, t, c, h, w = lrs.shape
        if t == 1:
            # nothing to align; SPyNet is not run on an empty batch
            empty = lrs.new_zeros(n, 0, 2, h, w)
            return (None if self.is_mirror_extended else empty), empty
        lrs_1 = lrs[:, :-1].reshape(-1, c, h, w)
        lrs_2 = lrs[:, 1:].reshape(-1, c, h, w)
        flows_backward = self.pair_flows(lrs_1, lrs_2).view(n, t - 1, 2, h, w)
        if self.is_mirror_extended:
            flows_forward = None
        else:
            flows_forward = self.pair_flows(lrs_2, lrs_1).view(n, t - 1, 2, h, w)
        return flows_forward, flows_backward

    def pair_flows(self, ref, supp):
        """Flows of independent frame pairs, ``(P, 3, H, W)`` each -> ``(P, 2, H, W)``: pair p's flow warps
        a state of ``supp[p]`` onto ``ref[p]``.

        `compute_flow` is this applied to every neighbouring pair; the long-video engine calls it on a
        few pairs at a time, so the two agree to the extent that the flow network's result for one pair
        does not depend on the other pairs in its batch (bitwise on one CPU thread; within fp32
        rounding when a multi-threaded library partitions small convolutions by batch size).
        """
        return self.spynet(ref, supp)

    @staticmethod
    def forward_flow(flows_forward, flows_backward, i):
        """Flow that brings the forward state from frame i-1 onto frame i (i >= 1)."""
        if flows_forward is not None:
            return flows_forward[:, i - 1]
        # mirror-extended input: frames i-1, i equal frames T-i, T-1-i, whose backward flow is stored
        return flows_backward[:, -i]

    @staticmethod
    def warp(feat, flow):
        """Warp a state (N, C, H, W) by a flow (N, 2, H, W); zeros outside the frame."""
        return flow_warp(feat, flow.permute(0, 2, 3, 1))

    def tail_parameters(self):
        """(weights, biases) of the tail's 3x3 convolutions in the order vsr_fast::reconstruction_tail
        takes them: upsample1, upsample2, conv_hr, conv_last."""
        convs = (self.upsample1.upsample_conv, self.upsample2.upsample_conv, self.conv_hr, self.conv_last)
        return [c.weight for c in convs], [c.bias for c in convs]

    def reconstruct(self, feat, lr):
        """x4 upsampling tail: feature (N, C, H, W) + its LR frame (N, 3, H, W) -> (N, 3, 4H, 4W)."""
        out = self.lrelu(self.upsample1(feat))
        out = self.lrelu(self.upsample2(out))
        out = self.lrelu(self.conv_hr(out))
        out = self.conv_last(out)
        return out + self.img_upsample(lr)


class BasicVSR(_RecurrentVSRBase):
    """BasicVSR, x4. Input (N, T, 3, H, W) RGB in [0, 1]; output (N, T, 3, 4H, 4W), not clamped.

    Same constructor and state-dict keys as mmagic's ``BasicVSRNet``.
    """

    def __init__(self, mid_channels=64, num_blocks=30, spynet_pretrained=None):
        super().__init__()
        self.mid_channels = mid_channels
        self.spynet = self.spynet_class(pretrained=spynet_pretrained)
        self.backward_resblocks = ResidualBlocksWithInputConv(mid_channels + 3, mid_channels, num_blocks)
        self.forward_resblocks = ResidualBlocksWithInputConv(mid_channels + 3, mid_channels, num_blocks)
        self.fusion = nn.Conv2d(mid_channels * 2, mid_channels, 1, 1, 0, bias=True)
        self._build_tail(mid_channels)
        self.is_mirror_extended = False
        self._warned_small_input = False

    def backward_step(self, lr, feat_prop, flow=None):
        """One backward-time step: warp the state from frame i+1 (unless ``flow`` is None), refine."""
        if flow is not None:
            feat_prop = self.warp(feat_prop, flow)
        # image first, then the state: the order of the trunk's input channels
        return self.backward_resblocks(torch.cat([lr, feat_prop], 1))

    def forward_step(self, lr, feat_prop, flow=None):
        """One forward-time step: warp the state from frame i-1 (unless ``flow`` is None), refine."""
        if flow is not None:
            feat_prop = self.warp(feat_prop, flow)
        return self.forward_resblocks(torch.cat([lr, feat_prop], 1))

    def fuse(self, feat_backward, feat_forward):
        return self.lrelu(self.fusion(torch.cat([feat_backward, feat_forward], 1)))

    def fuse_and_reconstruct(self, feat_backward, feat_forward, lr):
        """One output frame from its two states: ``reconstruct(fuse(feat_backward, feat_forward), lr)``."""
        return self.reconstruct(self.fuse(feat_backward, feat_forward), lr)

    def forward(self, lrs):
        check_video_input(lrs, "BasicVSR")
        n, t, _, h, w = lrs.shape
        self._warn_if_small(h, w)
        self.check_if_mirror_extended(lrs)
        flows_forward, flows_backward = self.compute_flow(lrs)

        feats_backward = [None] * t
        feat_prop = lrs.new_zeros(n, self.mid_channels, h, w)
        for i in range(t - 1, -1, -1):
            flow = flows_backward[:, i] if i < t - 1 else None
            feat_prop = self.backward_step(lrs[:, i], feat_prop, flow)
            feats_backward[i] = feat_prop

        outputs = []
        feat_prop = torch.zeros_like(feat_prop)
        for i in range(t):
            flow = self.forward_flow(flows_forward, flows_backward, i) if i > 0 else None
            feat_prop = self.forward_step(lrs[:, i], feat_prop, flow)
            outputs.append(self.fuse_and_reconstruct(feats_backward[i], feat_prop, lrs[:, i]))
        return torch.stack(outputs, dim=1)
