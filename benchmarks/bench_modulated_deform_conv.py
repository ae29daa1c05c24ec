"""modulated_deform_conv (DCNv2): vsr_fast vs the reference DCN, eager and under torch.compile.

EDVR's shapes: 64 -> 64 channels, 3x3, stride 1, padding 1, 8 deform groups, one image, at the PCD
pyramid's three levels of a 64x112 LR frame (l1/l2/l3) and at 180x320 (l1 of a 720p output), offsets
~ N(0, 2^2) px, masks ~ U(0, 1), fp32, forward and forward+backward. Plus the whole EDVR refill
extractor (one keyframe window of 5 frames at 64x112) with the reference's and vsr_fast's DCN packs.
Ratios of the same run are printed at the end (benchmarks/conftest.py).

The reference at 180x320 takes seconds per call: those cases run 3 rounds.
"""

import pytest
import torch

import vsr_fast
from vsr_fast import reference

SHAPES = {"l1_64x112": (64, 112), "l2_32x56": (32, 56), "l3_16x28": (16, 28), "l1_180x320": (180, 320)}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLS = ["vsr_fast", "reference", "reference_compiled", "vsr_fast_compiled"]
CHANNELS, GROUPS = 64, 8


def _fast(x, offset, mask, weight, bias):
    return vsr_fast.modulated_deform_conv(x, offset, mask, weight, bias, 1, 1, 1, 1, GROUPS)


def _reference(x, offset, mask, weight, bias):
    return reference.modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1, 1, GROUPS)


_compiled = {}


def implementation(name):
    base = {
        "vsr_fast": _fast,
        "reference": _reference,
        "vsr_fast_compiled": _fast,
        "reference_compiled": _reference,
    }[name]
    if not name.endswith("_compiled"):
        return base
    if name not in _compiled:
        _compiled[name] = torch.compile(base, dynamic=False)
    return _compiled[name]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("passes", ["forward", "forward_backward"])
def test_modulated_deform_conv(run_case, device, shape, impl, passes):
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    h, w = SHAPES[shape]
    x = torch.rand(1, CHANNELS, h, w, generator=g).to(device)
    offset = (torch.randn(1, 2 * GROUPS * 9, h, w, generator=g) * 2).to(device)
    mask = torch.rand(1, GROUPS * 9, h, w, generator=g).to(device)
    weight = ((torch.rand(CHANNELS, CHANNELS, 3, 3, generator=g) * 2 - 1) / 24).to(device)
    bias = (torch.rand(CHANNELS, generator=g) - 0.5).to(device)
    inputs = [x, offset, mask, weight, bias]
    fn = implementation(impl)
    if passes == "forward":

        def case():
            with torch.no_grad():
                fn(*inputs)
    else:
        for t in inputs:
            t.requires_grad_(True)
        grad = torch.randn(1, CHANNELS, h, w, generator=g).to(device)

        def case():
            for t in inputs:
                t.grad = None
            fn(*inputs).backward(grad)

    # forward's least memory traffic: read x, offsets and masks once, write the output once
    moved = (x.numel() + offset.numel() + mask.numel() + x.numel()) * 4 if passes == "forward" else None
    slow = shape == "l1_180x320" and impl.startswith("reference")
    run_case(
        f"modulated_deform_conv {passes} {shape} [1, 64, {h}, {w}] g8 {device.type}",
        impl,
        case,
        device,
        rounds=3 if slow else None,
        bytes_moved=moved,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["vsr_fast", "reference"])
def test_edvr_refill_extractor(run_case, device, impl):
    """One keyframe's refill features: EDVR on a 5-frame window (what IconVSR runs per keyframe)."""
    device = torch.device(device)
    torch.manual_seed(0)
    cls = vsr_fast.models.EDVRFeatureExtractor if impl == "vsr_fast" else reference.EDVRFeatureExtractor
    net = cls(mid_channels=64, num_frames=5, center_frame_idx=2).eval().to(device)
    with torch.no_grad():  # learnt-looking offsets rather than the all-zero initialisation
        for name, p in net.named_parameters():
            if "conv_offset" in name:
                p.normal_(0, 0.01)
    frames = torch.rand(1, 5, 3, 64, 112, generator=torch.Generator().manual_seed(1)).to(device)

    def case():
        with torch.no_grad():
            net(frames)

    run_case(
        f"edvr refill extractor fp32 window [1, 5, 3, 64, 112] {device.type}", impl, case, device, rounds=5
    )
