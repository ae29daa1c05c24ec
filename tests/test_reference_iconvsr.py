"""Reference IconVSR and its EDVR extractor."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vsr_fast.reference import EDVRFeatureExtractor, IconVSR, TSAFusion, keyframe_fusion, propagation_step

from _helpers import assert_close


def _count(m):
    return sum(p.numel() for p in m.parameters())


def _small(padding=2, seed=0, **kw):
    torch.manual_seed(seed)
    model = IconVSR(mid_channels=8, num_blocks=1, padding=padding, **kw).eval()
    return model


def _run(model, lrs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small test inputs
        with torch.no_grad():
            return model(lrs)


def test_keys_and_shapes_equal_mmagic(spec_keys):
    model = IconVSR()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == spec_keys(
        "mmagic_IconVSRNet_c64b30_pad2"
    )


def test_parameter_counts(spec_keys):
    p2, p3 = IconVSR(padding=2), IconVSR(padding=3)
    assert _count(p2) == 8_694_991
    assert _count(p3) == 8_711_375
    assert _count(p2.edvr) == 2_227_488 and _count(p3.edvr) == 2_243_872
    assert _count(p2.backward_resblocks) == 2_254_336 and _count(p2.forward_resblocks) == 2_291_200
    assert _count(p2.backward_fusion) == _count(p2.forward_fusion) == 73_792
    assert not hasattr(p2, "fusion")
    # padding 3 changes only the two TSA convs that see all 2p+1 frames
    p2_shapes = dict(spec_keys("mmagic_IconVSRNet_c64b30_pad2"))
    p3_shapes = {k: tuple(v.shape) for k, v in p3.state_dict().items()}
    assert p3_shapes.keys() == p2_shapes.keys()
    changed = {k for k in p2_shapes if p2_shapes[k] != p3_shapes[k]}
    assert changed == {"edvr.fusion.feat_fusion.conv.weight", "edvr.fusion.spatial_attn1.conv.weight"}
    assert p3_shapes["edvr.fusion.feat_fusion.conv.weight"] == (64, 448, 1, 1)


def test_keyframes_and_bad_arguments():
    model = _small()
    assert model.keyframe_indices(7) == [0, 5, 6]
    assert model.keyframe_indices(5) == [0, 4]
    assert model.keyframe_indices(11) == [0, 5, 10]
    assert model.keyframe_indices(100) == list(range(0, 100, 5)) + [99]
    with pytest.raises(ValueError, match="padding"):
        IconVSR(mid_channels=8, num_blocks=1, padding=4)


@pytest.mark.parametrize("padding,t", [(2, 4), (3, 6), (2, 1)])
def test_too_few_frames_is_a_clear_error(padding, t):
    with pytest.raises(ValueError, match=f"at least {2 * padding + 1} frames"):
        _run(_small(padding), torch.rand(1, t, 3, 16, 16))


class _WindowRecorder(nn.Module):
    """Stands in for the EDVR extractor: records which frames each keyframe window holds."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.windows = []

    def forward(self, x):
        self.windows.append([round(v) for v in x[0, :, 0, 0, 0].tolist()])
        n, _, _, h, w = x.shape
        return x.new_zeros(n, self.channels, h, w)


@pytest.mark.parametrize(
    "padding,t,expected",
    [
        (2, 7, [[4, 3, 0, 1, 2], [3, 4, 5, 6, 3], [4, 5, 6, 3, 2]]),
        (3, 7, [[6, 5, 4, 0, 1, 2, 3], [2, 3, 4, 5, 6, 2, 1], [3, 4, 5, 6, 2, 1, 0]]),
        (2, 12, [[4, 3, 0, 1, 2], [3, 4, 5, 6, 7], [8, 9, 10, 11, 8], [9, 10, 11, 8, 7]]),
    ],
)
def test_refill_windows_use_the_official_temporal_padding(padding, t, expected):
    model = _small(padding)
    model.edvr = _WindowRecorder(8)
    lrs = torch.arange(t, dtype=torch.float32).view(1, t, 1, 1, 1).expand(1, t, 3, 8, 8).contiguous()
    with torch.no_grad():
        model.compute_refill_features(lrs, model.keyframe_indices(t))
    assert model.edvr.windows == expected


def test_output_shape_and_padding_for_sizes_not_multiple_of_4():
    model = _small()
    lrs = torch.rand(1, 5, 3, 18, 23)
    out = _run(model, lrs)
    assert out.shape == (1, 5, 3, 72, 92)
    # the same as reflect-padding by hand to 20x24 and cropping the result
    padded = F.pad(lrs.view(5, 3, 18, 23), [0, 1, 0, 2], mode="reflect").view(1, 5, 3, 20, 24)
    torch.testing.assert_close(out, _run(model, padded)[..., :72, :92], rtol=0, atol=0)


def test_padding_3_needs_seven_frames_and_runs():
    out = _run(_small(3), torch.rand(1, 7, 3, 16, 20))
    assert out.shape == (1, 7, 3, 64, 80)


def test_float32_matches_float64():
    model = _small()
    lrs = torch.rand(1, 6, 3, 20, 24)
    out32 = _run(model, lrs)
    out64 = _run(copy.deepcopy(model).double(), lrs.double())
    assert_close(out32, out64, "float32_chain")


def test_mirror_shortcut_equals_full_computation():
    model = _small()
    half = torch.rand(1, 3, 3, 16, 20)
    lrs = torch.cat([half, half.flip(1)], 1)
    shortcut = _run(model, lrs)
    assert model.is_mirror_extended
    full_model = copy.deepcopy(model)

    def never_mirrored(x):
        full_model.is_mirror_extended = False
        return False

    full_model.check_if_mirror_extended = never_mirrored
    assert_close(shortcut, _run(full_model, lrs), "float32")


def test_edvr_extractor_shapes_and_checks():
    torch.manual_seed(0)
    edvr = EDVRFeatureExtractor(mid_channels=8, num_frames=5, center_frame_idx=2).eval()
    with torch.no_grad():
        assert edvr(torch.rand(2, 5, 3, 12, 16)).shape == (2, 8, 12, 16)
    with pytest.raises(ValueError, match="multiples of 4"):
        edvr(torch.rand(1, 5, 3, 12, 14))
    with pytest.raises(ValueError, match="5"):
        edvr(torch.rand(1, 3, 3, 12, 16))
    # mmagic default: 7 frames, centre 3, TSA on
    default = EDVRFeatureExtractor()
    assert default.num_frames == 7 and default.center_frame_idx == 3
    assert isinstance(default.fusion, TSAFusion)


def test_tsa_average_pool_counts_padding():
    tsa = TSAFusion(mid_channels=4, num_frames=3, center_frame_idx=1)
    assert tsa.avg_pool.count_include_pad is True
    assert (tsa.max_pool.kernel_size, tsa.max_pool.stride, tsa.max_pool.padding) == (3, 2, 1)


def test_functional_step_and_fusion_are_the_model_s():
    """reference.propagation_step with IconVSR's backward feature, and reference.keyframe_fusion, the
    ops' spec, compute exactly what IconVSR's step methods compute."""
    model = _small().double()
    g = torch.Generator().manual_seed(4)
    lr = torch.rand(1, 3, 20, 24, generator=g, dtype=torch.float64)
    feat_backward, state, refill = (
        torch.rand(1, 8, 20, 24, generator=g, dtype=torch.float64) for _ in range(3)
    )
    flow = torch.randn(1, 2, 20, 24, generator=g, dtype=torch.float64) * 2
    pixel_flow = flow.permute(0, 2, 3, 1)
    with torch.no_grad():
        forward = model.forward_resblocks.trunk_parameters()
        assert torch.equal(
            propagation_step(lr, feat_backward, state, pixel_flow, *forward),
            model.forward_step(lr, feat_backward, state, flow),
        )
        backward = model.backward_resblocks.trunk_parameters()
        assert torch.equal(
            propagation_step(lr, None, state, pixel_flow, *backward), model.backward_step(lr, state, flow)
        )
        for fusion in (model.backward_fusion, model.forward_fusion):
            assert torch.equal(
                keyframe_fusion(state, refill, fusion.weight, fusion.bias),
                fusion(torch.cat([state, refill], 1)),
            )
        fused = keyframe_fusion(
            model.warp(state, flow), refill, model.backward_fusion.weight, model.backward_fusion.bias
        )
        assert torch.equal(
            propagation_step(lr, None, fused, None, *backward), model.backward_step(lr, state, flow, refill)
        )
