"""Modulated deformable convolution (DCNv2) in pure PyTorch (mmcv's ModulatedDeformConv2d).

Offset layout is mmcv's (and torchvision's): for deform group g and kernel tap k = kh_idx * kw + kw_idx,
channel 2 * (K * g + k) holds the y displacement and the next channel the x displacement (K = kh * kw);
the mask channel is K * g + k. Input channels are split into ``deform_groups`` consecutive blocks.

Sampling is done with explicit corner gathers rather than ``grid_sample``: it keeps the positions in
pixel units (no normalise/denormalise round trip), so this stays a bit-faithful statement of the maths
for the compiled kernels to be compared against. It is differentiable in x, offset, mask, weight, bias.
"""

import torch
import torch.nn as nn

from .blocks import _uniform_fan_in_

__all__ = ["modulated_deform_conv2d", "ModulatedDCNPack"]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _bilinear_gather(x, py, px):
    """Sample ``x`` (N, G, Cg, H, W) at (py, px) (N, G, P) -> (N, G, Cg, P); outside taps give 0.

    A corner outside the image contributes 0 and the weights of the others are not renormalised, which
    is mmcv's rule (a point with py <= -1 or py >= H gets no contribution at all).
    """
    n, g, cg, h, w = x.shape
    flat = x.reshape(n, g, cg, h * w)
    y0 = torch.floor(py)
    x0 = torch.floor(px)
    ly = py - y0
    lx = px - x0
    y0 = y0.long()
    x0 = x0.long()
    out = None
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy = y0 + dy
            xx = x0 + dx
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            idx = yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)  # (N, G, P)
            vals = torch.gather(flat, 3, idx.unsqueeze(2).expand(n, g, cg, idx.shape[-1]))
            wgt = (wy * wx * valid.to(wy.dtype)).unsqueeze(2)
            term = vals * wgt
            out = term if out is None else out + term
    return out


def modulated_deform_conv2d(
    x, offset, mask, weight, bias=None, stride=1, padding=1, dilation=1, deform_groups=8
):
    """DCNv2: ``out = conv(weight, bilinear(x, p0 + p_k + offset_k) * mask_k) + bias``.

    x (N, C, H, W); offset (N, 2 * G * kh * kw, Ho, Wo); mask (N, G * kh * kw, Ho, Wo), already
    passed through a sigmoid; weight (Cout, C, kh, kw) (no grouped conv); bias (Cout,) or None.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"modulated_deform_conv2d: expected 4-D x and weight, got {list(x.shape)} "
            f"and {list(weight.shape)}"
        )
    n, c, h, w = x.shape
    cout, cin, kh, kw = weight.shape
    g = deform_groups
    if cin != c:
        raise ValueError(f"modulated_deform_conv2d: weight expects {cin} input channels, x has {c}")
    if g < 1 or c % g != 0:
        raise ValueError(f"modulated_deform_conv2d: {c} channels cannot be split into {g} deform groups")
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k = kh * kw
    if tuple(offset.shape) != (n, 2 * g * k, ho, wo) or tuple(mask.shape) != (n, g * k, ho, wo):
        raise ValueError(
            f"modulated_deform_conv2d: expected offset {[n, 2 * g * k, ho, wo]} and mask "
            f"{[n, g * k, ho, wo]}, got {list(offset.shape)} and {list(mask.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"modulated_deform_conv2d: bias must be ({cout},), got {list(bias.shape)}")

    dtype, dev = x.dtype, x.device
    # base sampling position of tap (i, j) for output (oy, ox): (oy*sh - ph + i*dh, ox*sw - pw + j*dw)
    base_y = (torch.arange(ho, device=dev, dtype=dtype) * sh - ph).view(1, ho, 1) + (
        torch.arange(kh, device=dev, dtype=dtype) * dh
    ).repeat_interleave(kw).view(k, 1, 1)
    base_x = (torch.arange(wo, device=dev, dtype=dtype) * sw - pw).view(1, 1, wo) + (
        torch.arange(kw, device=dev, dtype=dtype) * dw
    ).repeat(kh).view(k, 1, 1)
    off = offset.view(n, g, k, 2, ho, wo)
    py = (base_y + off[:, :, :, 0]).reshape(n, g, k * ho * wo)
    px = (base_x + off[:, :, :, 1]).reshape(n, g, k * ho * wo)
    cols = _bilinear_gather(x.view(n, g, c // g, h, w), py, px)  # (N, G, Cg, K*Ho*Wo)
    cols = cols.view(n, g, c // g, k, ho * wo) * mask.view(n, g, 1, k, ho * wo)
    # (N, C*K, L) with channel-major, tap-minor order = the flattening of weight (Cout, C, kh, kw)
    cols = cols.reshape(n, c * k, ho * wo)
    out = torch.matmul(weight.reshape(cout, c * k), cols)
    if bias is not None:
        out = out + bias.view(1, cout, 1)
    return out.view(n, cout, ho, wo)


class ModulatedDCNPack(nn.Module):
    """mmagic's ``ModulatedDCNPack``: offsets and mask predicted by ``conv_offset`` from ``extra_feat``.

    ``conv_offset`` output (3 * G * K channels) is split in thirds: the first two thirds are the offsets
    as they are, the last third goes through a sigmoid to give the mask. No tanh / magnitude clamp (that
    is BasicVSR++). Parameter names ``weight``, ``bias``, ``conv_offset.*`` match mmagic and BasicSR.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size=3,
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        deform_groups=8,
        bias=True,
    ):
        super().__init__()
        if groups != 1:
            raise ValueError("ModulatedDCNPack: only groups=1 is used by EDVR and supported here")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.deform_groups = deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        k = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(
            in_channels,
            deform_groups * 3 * k,
            self.kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=True,
        )
        _uniform_fan_in_(self.weight, self.bias)
        # zero offsets and mask 0.5 at the start: the pack begins as a plain (halved) conv
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    # the deformable convolution itself; a subclass (vsr_fast.models) may substitute a faster one
    deform_conv = staticmethod(modulated_deform_conv2d)

    def forward(self, x, extra_feat):
        out = self.conv_offset(extra_feat)
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        mask = torch.sigmoid(mask)
        return self.deform_conv(
            x,
            offset,
            mask,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            deform_groups=self.deform_groups,
        )
