"""IconVSR (mmagic's IconVSRNet): BasicVSR + information refill at keyframes + coupled propagation."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .basicvsr import _RecurrentVSRBase, check_video_input
from .blocks import ResidualBlocksWithInputConv
from .edvr import EDVRFeatureExtractor

__all__ = ["IconVSR"]

# Frames put before / after the sequence to give every keyframe a full EDVR window. These are the
# official index lists, not a symmetric reflection (p=2 prepends 4,3 rather than 2,1).
_TEMPORAL_PAD = {
    2: ([4, 3], [-4, -5]),
    3: ([6, 5, 4], [-5, -6, -7]),
}


class IconVSR(_RecurrentVSRBase):
    """IconVSR, x4. Input (N, T, 3, H, W) RGB in [0, 1], T >= 2 * padding + 1; output (N, T, 3, 4H, 4W).

    Same constructor and state-dict keys as mmagic's ``IconVSRNet``. One deliberate difference: the
    EDVR extractor gets ``mid_channels`` (as in BasicSR) instead of a fixed 64, so small models can be
    built for tests; with the only released width, 64, the two are the same network.
    """

    # the refill feature extractor's class; a subclass (vsr_fast.models) may substitute a faster one
    edvr_class = EDVRFeatureExtractor

    def __init__(
        self,
        mid_channels=64,
        num_blocks=30,
        keyframe_stride=5,
        padding=2,
        spynet_pretrained=None,
        edvr_pretrained=None,
    ):
        super().__init__()
        if padding not in _TEMPORAL_PAD:
            raise ValueError(
                f"IconVSR: padding must be 2 (REDS models) or 3 (Vimeo-90K models), got {padding}"
            )
        if keyframe_stride < 1:
            raise ValueError(f"IconVSR: keyframe_stride must be >= 1, got {keyframe_stride}")
        self.mid_channels = mid_channels
        self.padding = padding
        self.keyframe_stride = keyframe_stride
        self.spynet = self.spynet_class(pretrained=spynet_pretrained)
        self.edvr = self.edvr_class(
            mid_channels=mid_channels,
            num_frames=padding * 2 + 1,
            center_frame_idx=padding,
            pretrained=edvr_pretrained,
        )
        self.backward_fusion = nn.Conv2d(2 * mid_channels, mid_channels, 3, 1, 1, bias=True)
        self.forward_fusion = nn.Conv2d(2 * mid_channels, mid_channels, 3, 1, 1, bias=True)
        self.backward_resblocks = ResidualBlocksWithInputConv(mid_channels + 3, mid_channels, num_blocks)
        # coupled propagation: the forward trunk also sees the backward feature of the same frame
        self.forward_resblocks = ResidualBlocksWithInputConv(2 * mid_channels + 3, mid_channels, num_blocks)
        self._build_tail(mid_channels)
        self.is_mirror_extended = False
        self._warned_small_input = False

    @property
    def min_frames(self):
        return 2 * self.padding + 1

    @staticmethod
    def spatial_padding(lrs):
        """Reflect-pad H and W (bottom/right) to multiples of 4, as PCD and TSA need."""
        n, t, c, h, w = lrs.shape
        pad_h = (4 - h % 4) % 4
        pad_w = (4 - w % 4) % 4
        if pad_h >= h or pad_w >= w:
            raise ValueError(
                f"IconVSR: frames of {h}x{w} are too small: reflect-padding them to a multiple "
                f"of 4 needs at least 3 pixels in each direction"
            )
        if pad_h == 0 and pad_w == 0:
            return lrs
        lrs = F.pad(lrs.reshape(-1, c, h, w), [0, pad_w, 0, pad_h], mode="reflect")
        return lrs.view(n, t, c, h + pad_h, w + pad_w)

    def keyframe_indices(self, t):
        """Every ``keyframe_stride``-th frame, plus the last frame."""
        idx = list(range(0, t, self.keyframe_stride))
        if idx[-1] != t - 1:
            idx.append(t - 1)
        return idx

    def refill_window(self, t, i):
        """Indices (into the T frames) of the EDVR window centred on keyframe ``i``.

        Near the ends the window runs into the official temporal padding, which reaches up to
        ``2 * padding`` frames in from each end (frames 4, 3 and T-4, T-5 for padding 2).
        """
        before, after = _TEMPORAL_PAD[self.padding]
        padded = before + list(range(t)) + [t + j for j in after]
        return padded[i : i + 2 * self.padding + 1]

    def compute_refill_feature(self, window):
        """EDVR feature of one keyframe from its window ``(N, 2 * padding + 1, 3, H, W)`` -> (N, C, H, W)."""
        return self.edvr(window)

    def compute_refill_features(self, lrs, keyframe_idx):
        """EDVR features of each keyframe i from the window centred on it -> dict {i: (N, C, H, W)}."""
        t = lrs.size(1)
        # indexing with a list copies: each window is contiguous, as EDVR wants
        return {i: self.compute_refill_feature(lrs[:, self.refill_window(t, i)]) for i in keyframe_idx}

    def backward_step(self, lr, feat_prop, flow=None, feat_refill=None):
        """Warp the state from frame i+1 (unless ``flow`` is None), refill at keyframes, refine."""
        if flow is not None:
            feat_prop = self.warp(feat_prop, flow)
        if feat_refill is not None:
            # propagated state first, refill second
            feat_prop = self.backward_fusion(torch.cat([feat_prop, feat_refill], 1))
        return self.backward_resblocks(torch.cat([lr, feat_prop], 1))

    def forward_step(self, lr, feat_backward, feat_prop, flow=None, feat_refill=None):
        """Warp the state from frame i-1, refill at keyframes, refine with the backward feature."""
        if flow is not None:
            feat_prop = self.warp(feat_prop, flow)
        if feat_refill is not None:
            feat_prop = self.forward_fusion(torch.cat([feat_prop, feat_refill], 1))
        return self.forward_resblocks(torch.cat([lr, feat_backward, feat_prop], 1))

    def forward(self, lrs):
        check_video_input(lrs, "IconVSR")
        n, t, _, h_input, w_input = lrs.shape
        if t < self.min_frames:
            raise ValueError(
                f"IconVSR: padding={self.padding} needs at least {self.min_frames} frames (the "
                f"information-refill window is {self.min_frames} frames), got {t}"
            )
        self._warn_if_small(h_input, w_input)
        # on the unpadded frames, like the official code (padding does not change the answer)
        self.check_if_mirror_extended(lrs)
        lrs = self.spatial_padding(lrs)
        h, w = lrs.shape[3:]

        keyframe_idx = self.keyframe_indices(t)
        flows_forward, flows_backward = self.compute_flow(lrs)
        feats_refill = self.compute_refill_features(lrs, keyframe_idx)

        feats_backward = [None] * t
        feat_prop = lrs.new_zeros(n, self.mid_channels, h, w)
        for i in range(t - 1, -1, -1):
            flow = flows_backward[:, i] if i < t - 1 else None
            feat_prop = self.backward_step(lrs[:, i], feat_prop, flow, feats_refill.get(i))
            feats_backward[i] = feat_prop

        outputs = []
        feat_prop = torch.zeros_like(feat_prop)
        for i in range(t):
            flow = self.forward_flow(flows_forward, flows_backward, i) if i > 0 else None
            feat_prop = self.forward_step(lrs[:, i], feats_backward[i], feat_prop, flow, feats_refill.get(i))
            outputs.append(self.reconstruct(feat_prop, lrs[:, i]))
        return torch.stack(outputs, dim=1)[:, :, :, : 4 * h_input, : 4 * w_input]
