"""Reference DCNv2: layout, sampling rule, and the plain-conv special case."""

import math

import pytest
import torch
import torch.nn.functional as F

from vsr_fast.reference import ModulatedDCNPack, modulated_deform_conv2d

from _helpers import TOLERANCE


def _loop_dcn(x, offset, mask, weight, bias, stride, padding, dilation, groups):
    """Direct transcription of the mmcv kernel: one output pixel, one tap, one channel at a time."""
    n, c, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    cg = c // groups
    out = torch.zeros(n, cout, ho, wo, dtype=x.dtype)
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                cols = torch.zeros(c, kh, kw, dtype=x.dtype)
                for ch in range(c):
                    g = ch // cg
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            py = (
                                oy * stride
                                - padding
                                + i * dilation
                                + offset[b, 2 * (g * kh * kw + k), oy, ox].item()
                            )
                            px = (
                                ox * stride
                                - padding
                                + j * dilation
                                + offset[b, 2 * (g * kh * kw + k) + 1, oy, ox].item()
                            )
                            val = 0.0
                            if -1 < py < h and -1 < px < w:
                                y0, x0 = math.floor(py), math.floor(px)
                                ly, lx = py - y0, px - x0
                                for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
                                    for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
                                        if 0 <= yy < h and 0 <= xx < w:
                                            val += wy * wx * x[b, ch, yy, xx].item()
                            cols[ch, i, j] = val * mask[b, g * kh * kw + k, oy, ox].item()
                out[b, :, oy, ox] = (weight * cols).sum((1, 2, 3)) + bias
    return out


@pytest.mark.parametrize(
    "stride,padding,dilation,groups",
    [
        (1, 1, 1, 1),
        (1, 1, 1, 4),
        (2, 1, 1, 2),
        (1, 2, 2, 8),
        (1, 0, 1, 1),
    ],
)
def test_zero_offset_unit_mask_is_conv2d(stride, padding, dilation, groups):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 11, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 8, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    ref = F.conv2d(x, weight, bias, stride, padding, dilation)
    ho, wo = ref.shape[2:]
    offset = torch.zeros(2, 2 * groups * 9, ho, wo, dtype=torch.float64)
    mask = torch.ones(2, groups * 9, ho, wo, dtype=torch.float64)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation, groups)
    torch.testing.assert_close(out, ref, rtol=0, atol=TOLERANCE["float64"])


def test_against_direct_loop_with_fractional_and_outside_offsets():
    g = torch.Generator().manual_seed(1)
    n, c, h, w, groups = 1, 4, 5, 6, 2
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(3, c, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    offset = (torch.rand(n, 2 * groups * 9, h, w, generator=g, dtype=torch.float64) - 0.5) * 6
    # taps fully outside, straddling the border, and exactly on -1 / H (no contribution)
    offset[0, 0, 0, 0] = -7.3
    offset[0, 1, 2, 3] = 9.25
    offset[0, 18, 4, 5] = 1.5
    offset[0, 5, 1, 1] = -0.5
    offset[0, 20, 0, 0] = 0.0  # tap (0, 1) of group 1 at output (0, 0): py = -1 exactly
    mask = torch.rand(n, groups * 9, h, w, generator=g, dtype=torch.float64)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1, 1, groups)
    ref = _loop_dcn(x, offset, mask, weight, bias, 1, 1, 1, groups)
    torch.testing.assert_close(out, ref, rtol=0, atol=TOLERANCE["float64"])
    # float32 follows the same maths
    out32 = modulated_deform_conv2d(
        x.float(), offset.float(), mask.float(), weight.float(), bias.float(), 1, 1, 1, groups
    )
    torch.testing.assert_close(out32.double(), ref, rtol=0, atol=TOLERANCE["float32"])


def test_offset_channel_order_is_dy_then_dx():
    # a constant shift of +1 px in x for every tap equals sampling the image one pixel to the right
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 8, 7, 9, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 8, 3, 3, generator=g, dtype=torch.float64)
    offset = torch.zeros(1, 2 * 8 * 9, 7, 9, dtype=torch.float64)
    offset[:, 1::2] = 1.0
    mask = torch.ones(1, 8 * 9, 7, 9, dtype=torch.float64)
    shifted = F.pad(x[..., 1:], [0, 1])
    out = modulated_deform_conv2d(x, offset, mask, weight, None, deform_groups=8)
    # column 0 differs: the deformed taps there still see x[..., 0], the shifted conv sees padding
    torch.testing.assert_close(
        out[..., 1:], F.conv2d(shifted, weight, None, 1, 1)[..., 1:], rtol=0, atol=TOLERANCE["float64"]
    )
    offset = torch.zeros_like(offset)
    offset[:, 0::2] = -1.0  # up one pixel
    shifted = F.pad(x[..., :-1, :], [0, 0, 1, 0])
    out = modulated_deform_conv2d(x, offset, mask, weight, None, deform_groups=8)
    torch.testing.assert_close(
        out[..., :-1, :],
        F.conv2d(shifted, weight, None, 1, 1)[..., :-1, :],
        rtol=0,
        atol=TOLERANCE["float64"],
    )


def test_deform_groups_own_consecutive_channels():
    # moving only group 1's taps changes only what channels 2..3 contribute
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 6, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    offset = torch.zeros(1, 2 * 2 * 9, 6, 6, dtype=torch.float64)
    offset[:, 18:] = 0.37
    mask = torch.ones(1, 18, 6, 6, dtype=torch.float64)
    out = modulated_deform_conv2d(x, offset, mask, weight, None, deform_groups=2)
    first = F.conv2d(x[:, :2], weight[:, :2], None, 1, 1)
    second = modulated_deform_conv2d(
        x[:, 2:], offset[:, 18:], mask[:, 9:], weight[:, 2:], None, deform_groups=1
    )
    torch.testing.assert_close(out, first + second, rtol=0, atol=TOLERANCE["float64"])


def test_dcn_pack_starts_as_half_conv_and_splits_mask_last():
    torch.manual_seed(0)
    pack = ModulatedDCNPack(16, 8, 3, padding=1, deform_groups=8).double()
    x = torch.randn(2, 16, 8, 10, dtype=torch.float64)
    extra = torch.randn(2, 16, 8, 10, dtype=torch.float64)
    assert pack.conv_offset.weight.shape == (216, 16, 3, 3)
    # conv_offset starts at zero: offsets 0, mask sigmoid(0) = 0.5
    ref = 0.5 * F.conv2d(x, pack.weight, None, 1, 1) + pack.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(pack(x, extra), ref, rtol=0, atol=TOLERANCE["float64"])
    # the last third of conv_offset's channels is the mask logit
    with torch.no_grad():
        pack.conv_offset.bias[144:] = 40.0
    ref = F.conv2d(x, pack.weight, pack.bias, 1, 1)
    torch.testing.assert_close(pack(x, extra), ref, rtol=0, atol=TOLERANCE["float64"])


def test_gradients_flow_to_every_input():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    # keep sample points off the integer grid, where bilinear is not differentiable
    offset = (torch.rand(1, 2 * 9, 4, 4, generator=g, dtype=torch.float64) * 0.6 + 0.2).requires_grad_()
    mask = torch.rand(1, 9, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: modulated_deform_conv2d(*a, deform_groups=1), (x, offset, mask, weight, bias)
    )


def test_bad_shapes_raise():
    x = torch.randn(1, 8, 5, 5)
    w = torch.randn(4, 8, 3, 3)
    with pytest.raises(ValueError, match="offset"):
        modulated_deform_conv2d(x, torch.zeros(1, 10, 5, 5), torch.ones(1, 72, 5, 5), w, None)
    with pytest.raises(ValueError, match="deform groups"):
        modulated_deform_conv2d(
            x, torch.zeros(1, 54, 5, 5), torch.ones(1, 27, 5, 5), w, None, deform_groups=3
        )
    with pytest.raises(ValueError, match="input channels"):
        modulated_deform_conv2d(
            x, torch.zeros(1, 144, 5, 5), torch.ones(1, 72, 5, 5), torch.randn(4, 6, 3, 3), None
        )
