"""EDVR-M feature extractor used by IconVSR's information refill (mmagic's EDVRFeatureExtractor).

Feature pyramid -> PCD alignment (modulated deformable convs, every frame to the centre frame) -> TSA
fusion. There is no reconstruction trunk or upsampler: IconVSR only needs the fused features.
"""

import torch
import torch.nn as nn

from .blocks import ConvModule, ResidualBlockNoBN, load_pretrained, lrelu, make_layer
from .dcn import ModulatedDCNPack

__all__ = ["PCDAlignment", "TSAFusion", "EDVRFeatureExtractor"]


class PCDAlignment(nn.Module):
    """Pyramid, cascading and deformable alignment of one neighbour's features to the reference's.

    What is passed between levels are 64-channel *offset features*, upsampled x2 and multiplied by 2;
    each level's ``dcn_pack`` turns them into offsets and masks with its own ``conv_offset``.
    """

    # the deformable convolution's class; a subclass (vsr_fast.models) may substitute a faster one
    dcn_pack_class = ModulatedDCNPack

    def __init__(self, mid_channels=64, deform_groups=8):
        super().__init__()
        self.offset_conv1 = nn.ModuleDict()
        self.offset_conv2 = nn.ModuleDict()
        self.offset_conv3 = nn.ModuleDict()
        self.dcn_pack = nn.ModuleDict()
        self.feat_conv = nn.ModuleDict()
        # levels are built coarse to fine (l3 first) because that fixes the state-dict order
        for i in range(3, 0, -1):
            level = f"l{i}"
            self.offset_conv1[level] = ConvModule(mid_channels * 2, mid_channels, 3, padding=1)
            if i == 3:
                self.offset_conv2[level] = ConvModule(mid_channels, mid_channels, 3, padding=1)
            else:
                self.offset_conv2[level] = ConvModule(mid_channels * 2, mid_channels, 3, padding=1)
                self.offset_conv3[level] = ConvModule(mid_channels, mid_channels, 3, padding=1)
            self.dcn_pack[level] = self.dcn_pack_class(
                mid_channels, mid_channels, 3, padding=1, deform_groups=deform_groups
            )
            if i < 3:
                # the finest level's merge has no activation: the cascade below follows it
                self.feat_conv[level] = ConvModule(
                    mid_channels * 2, mid_channels, 3, padding=1, act="lrelu" if i == 2 else None
                )
        self.cas_offset_conv1 = ConvModule(mid_channels * 2, mid_channels, 3, padding=1)
        self.cas_offset_conv2 = ConvModule(mid_channels, mid_channels, 3, padding=1)
        self.cas_dcnpack = self.dcn_pack_class(
            mid_channels, mid_channels, 3, padding=1, deform_groups=deform_groups
        )
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.lrelu = lrelu()

    def forward(self, neighbor_feats, ref_feats):
        """Lists [L1, L2, L3] of (N, C, H/2^k, W/2^k) features -> aligned L1 features (N, C, H, W)."""
        if len(neighbor_feats) != 3 or len(ref_feats) != 3:
            raise ValueError("PCDAlignment: expected three pyramid levels for neighbour and reference")
        up_offset, up_feat = None, None
        for i in range(3, 0, -1):
            level = f"l{i}"
            offset = self.offset_conv1[level](torch.cat([neighbor_feats[i - 1], ref_feats[i - 1]], 1))
            if i == 3:
                offset = self.offset_conv2[level](offset)
            else:
                offset = self.offset_conv2[level](torch.cat([offset, up_offset], 1))
                offset = self.offset_conv3[level](offset)
            feat = self.dcn_pack[level](neighbor_feats[i - 1], offset)
            if i == 3:
                feat = self.lrelu(feat)
            else:
                feat = self.feat_conv[level](torch.cat([feat, up_feat], 1))
            if i > 1:
                # offsets are in pixels of the coarser level: twice as many at the finer one
                up_offset = self.upsample(offset) * 2
                up_feat = self.upsample(feat)
        offset = self.cas_offset_conv2(self.cas_offset_conv1(torch.cat([feat, ref_feats[0]], 1)))
        return self.lrelu(self.cas_dcnpack(feat, offset))


class TSAFusion(nn.Module):
    """Temporal (per-frame correlation with the centre) and spatial (pyramid) attention fusion."""

    def __init__(self, mid_channels=64, num_frames=5, center_frame_idx=2):
        super().__init__()
        self.center_frame_idx = center_frame_idx
        self.temporal_attn1 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.temporal_attn2 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.feat_fusion = ConvModule(num_frames * mid_channels, mid_channels, 1)
        self.spatial_attn1 = ConvModule(num_frames * mid_channels, mid_channels, 1)
        self.spatial_attn2 = ConvModule(mid_channels * 2, mid_channels, 1)
        self.spatial_attn3 = ConvModule(mid_channels, mid_channels, 3, padding=1)
        self.spatial_attn4 = ConvModule(mid_channels, mid_channels, 1)
        self.spatial_attn5 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.spatial_attn_l1 = ConvModule(mid_channels, mid_channels, 1)
        self.spatial_attn_l2 = ConvModule(mid_channels * 2, mid_channels, 3, padding=1)
        self.spatial_attn_l3 = ConvModule(mid_channels, mid_channels, 3, padding=1)
        self.spatial_attn_add1 = ConvModule(mid_channels, mid_channels, 1)
        self.spatial_attn_add2 = nn.Conv2d(mid_channels, mid_channels, 1)
        self.max_pool = nn.MaxPool2d(3, stride=2, padding=1)
        # count_include_pad stays True (the default): border averages are diluted by the padding zeros
        self.avg_pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.lrelu = lrelu()

    def forward(self, aligned_feat):
        """(N, T, C, H, W) aligned features, H and W multiples of 4 -> (N, C, H, W)."""
        n, t, c, h, w = aligned_feat.shape
        embedding_ref = self.temporal_attn1(aligned_feat[:, self.center_frame_idx])
        # explicit sizes, not -1: a view of 0 elements (batch 0) cannot infer one
        embedding = self.temporal_attn2(aligned_feat.reshape(n * t, c, h, w))
        embedding = embedding.view(n, t, embedding.size(1), h, w)
        corr = torch.stack([torch.sum(embedding[:, i] * embedding_ref, 1) for i in range(t)], 1)
        corr_prob = torch.sigmoid(corr).unsqueeze(2).expand(n, t, c, h, w).reshape(n, t * c, h, w)
        aligned_feat = aligned_feat.reshape(n, t * c, h, w) * corr_prob

        feat = self.feat_fusion(aligned_feat)

        attn = self.spatial_attn1(aligned_feat)
        attn = self.spatial_attn2(torch.cat([self.max_pool(attn), self.avg_pool(attn)], 1))
        attn_level = self.spatial_attn_l1(attn)
        attn_level = self.spatial_attn_l2(
            torch.cat([self.max_pool(attn_level), self.avg_pool(attn_level)], 1)
        )
        attn_level = self.upsample(self.spatial_attn_l3(attn_level))
        attn = self.spatial_attn3(attn) + attn_level
        attn = self.upsample(self.spatial_attn4(attn))
        attn = self.spatial_attn5(attn)
        attn_add = self.spatial_attn_add2(self.spatial_attn_add1(attn))
        return feat * torch.sigmoid(attn) * 2 + attn_add


class EDVRFeatureExtractor(nn.Module):
    """EDVR-M without reconstruction: ``(N, T, 3, H, W)`` -> fused features ``(N, C, H, W)``.

    Constructor arguments are mmagic's; ``out_channel`` and ``num_blocks_reconstruction`` are accepted
    for signature compatibility and unused (the extractor has no reconstruction part).
    """

    # the alignment module's class; a subclass (vsr_fast.models) may substitute a faster one
    pcd_alignment_class = PCDAlignment

    def __init__(
        self,
        in_channels=3,
        out_channel=3,
        mid_channels=64,
        num_frames=7,
        deform_groups=8,
        num_blocks_extraction=5,
        num_blocks_reconstruction=10,
        center_frame_idx=3,
        with_tsa=True,
        pretrained=None,
    ):
        super().__init__()
        if not 0 <= center_frame_idx < num_frames:
            raise ValueError(
                f"EDVRFeatureExtractor: center_frame_idx {center_frame_idx} is not a "
                f"frame index for num_frames={num_frames}"
            )
        self.num_frames = num_frames
        self.center_frame_idx = center_frame_idx
        self.with_tsa = with_tsa
        self.conv_first = nn.Conv2d(in_channels, mid_channels, 3, 1, 1)
        self.feature_extraction = make_layer(
            ResidualBlockNoBN, num_blocks_extraction, mid_channels=mid_channels
        )
        self.feat_l2_conv1 = ConvModule(mid_channels, mid_channels, 3, 2, 1)
        self.feat_l2_conv2 = ConvModule(mid_channels, mid_channels, 3, 1, 1)
        self.feat_l3_conv1 = ConvModule(mid_channels, mid_channels, 3, 2, 1)
        self.feat_l3_conv2 = ConvModule(mid_channels, mid_channels, 3, 1, 1)
        self.pcd_alignment = self.pcd_alignment_class(mid_channels=mid_channels, deform_groups=deform_groups)
        if with_tsa:
            self.fusion = TSAFusion(
                mid_channels=mid_channels, num_frames=num_frames, center_frame_idx=center_frame_idx
            )
        else:
            self.fusion = nn.Conv2d(num_frames * mid_channels, mid_channels, 1, 1)
        self.lrelu = lrelu()
        load_pretrained(self, pretrained, "EDVRFeatureExtractor")

    def forward(self, x):
        if x.dim() != 5 or x.size(1) != self.num_frames:
            raise ValueError(
                f"EDVRFeatureExtractor: expected (N, {self.num_frames}, C, H, W), got {list(x.shape)}"
            )
        n, t, c, h, w = x.shape
        if h % 4 != 0 or w % 4 != 0:
            raise ValueError(
                f"EDVRFeatureExtractor: height and width must be multiples of 4 (two "
                f"stride-2 pyramid levels), got {h} and {w}"
            )
        l1 = self.feature_extraction(self.lrelu(self.conv_first(x.reshape(n * t, c, h, w))))
        l2 = self.feat_l2_conv2(self.feat_l2_conv1(l1))
        l3 = self.feat_l3_conv2(self.feat_l3_conv1(l2))
        # explicit sizes, not -1: a view of 0 elements (batch 0) cannot infer one
        l1 = l1.view(n, t, l1.size(1), h, w)
        l2 = l2.view(n, t, l2.size(1), h // 2, w // 2)
        l3 = l3.view(n, t, l3.size(1), h // 4, w // 4)

        c_idx = self.center_frame_idx
        ref_feats = [l1[:, c_idx], l2[:, c_idx], l3[:, c_idx]]
        aligned = torch.stack(
            [self.pcd_alignment([l1[:, i], l2[:, i], l3[:, i]], ref_feats) for i in range(t)], 1
        )
        if self.with_tsa:
            return self.fusion(aligned)
        return self.fusion(aligned.view(n, t * aligned.size(2), h, w))
