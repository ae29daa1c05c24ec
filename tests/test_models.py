"""The fast drop-in models (vsr_fast.BasicVSR / IconVSR) against the reference models."""

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vsr_fast
from vsr_fast import reference

from _helpers import TOLERANCE, assert_close_scaled


def pair(fast_cls, ref_cls, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = ref_cls(**kwargs).eval()
    fast = fast_cls(**kwargs).eval()
    fast.load_state_dict(ref.state_dict(), strict=True)
    return fast, ref


@pytest.mark.parametrize(
    "fast_cls, ref_cls, kwargs",
    [
        (vsr_fast.BasicVSR, reference.BasicVSR, {}),
        (vsr_fast.IconVSR, reference.IconVSR, {"padding": 3}),
    ],
)
def test_same_constructor_and_state_dict_keys(fast_cls, ref_cls, kwargs):
    fast, ref = fast_cls(**kwargs), ref_cls(**kwargs)
    assert [(k, v.shape) for k, v in fast.state_dict().items()] == [
        (k, v.shape) for k, v in ref.state_dict().items()
    ]


@pytest.mark.parametrize(
    "fast_cls, ref_cls, kwargs, frames",
    [
        (vsr_fast.BasicVSR, reference.BasicVSR, dict(mid_channels=16, num_blocks=2), 5),
        (vsr_fast.IconVSR, reference.IconVSR, dict(mid_channels=16, num_blocks=2, padding=2), 6),
    ],
)
@pytest.mark.parametrize("mirrored", [False, True])
def test_outputs_match_the_reference(fast_cls, ref_cls, kwargs, frames, mirrored):
    fast, ref = pair(fast_cls, ref_cls, **kwargs)
    lrs = torch.rand(1, frames, 3, 22, 26)
    if mirrored:
        lrs = torch.cat([lrs, lrs.flip(1)], 1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # inputs below 64x64
        expected = ref.double()(lrs.double())
        out = fast(lrs)
    assert fast.is_mirror_extended == mirrored
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE["float32_chain"], rtol=0)


def test_training_gradients_match_the_reference():
    """float32 parameter gradients of a training step through the fast model against the float64
    reference model's, each tensor relative to its own magnitude."""
    fast, ref = pair(vsr_fast.BasicVSR, reference.BasicVSR, mid_channels=8, num_blocks=1)
    fast.train()
    ref.double().train()
    lrs = torch.rand(1, 3, 3, 16, 20)
    target = torch.rand(1, 3, 3, 64, 80)
    grads = []
    for model, dtype in ((fast, torch.float32), (ref, torch.float64)):
        model.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = model(lrs.to(dtype))
            loss = torch.sqrt((out - target.to(dtype)) ** 2 + 1e-12).mean()  # Charbonnier, as in training
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for k in grads[0]:
        assert_close_scaled(grads[0][k], grads[1][k], "float32_chain", msg=k)


class _OpCounter(TorchDispatchMode):
    """Counts the operators that reach the dispatcher, by name."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_fast_iconvsr_aligns_through_the_deform_conv_op():
    fast, _ = pair(vsr_fast.IconVSR, reference.IconVSR, mid_channels=16, num_blocks=1, padding=2)
    assert isinstance(fast.edvr, vsr_fast.models.EDVRFeatureExtractor)
    counter = _OpCounter()
    with torch.no_grad(), warnings.catch_warnings(), counter:
        warnings.simplefilter("ignore", UserWarning)
        fast(torch.rand(1, 6, 3, 16, 20))
    # keyframes 0 and 5, a 5-frame window each, 4 DCN packs per frame's PCD alignment (L3, L2, L1, cascade)
    assert counter.calls.get("vsr_fast::modulated_deform_conv") == 2 * 5 * 4
    # and none of the reference DCN's corner gathers
    assert "aten::gather" not in counter.calls


def test_fast_edvr_outputs_and_gradients_match_the_reference():
    torch.manual_seed(0)
    ref = reference.EDVRFeatureExtractor(mid_channels=16, num_frames=5, center_frame_idx=2)
    fast = vsr_fast.models.EDVRFeatureExtractor(mid_channels=16, num_frames=5, center_frame_idx=2)
    fast.load_state_dict(ref.state_dict(), strict=True)
    assert list(fast.state_dict()) == list(ref.state_dict())
    # learnt offsets are not zero: perturb conv_offset so that the packs really deform
    with torch.no_grad():
        for model in (fast, ref):
            for name, p in model.named_parameters():
                if "conv_offset" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    frames = torch.rand(1, 5, 3, 16, 24)
    # float32 against the float64 reference: the reference run in float32 is the less accurate of the
    # two, its sampling positions (base + offset in float32) losing the offsets' low bits (its worst
    # parameter gradient is off by 2.6e-4 of its magnitude here, the fast model's by 3e-6)
    ref.double()
    outs, grads = [], []
    for model, dtype in ((fast, torch.float32), (ref, torch.float64)):
        model.zero_grad()
        out = model(frames.to(dtype))
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0].double(), outs[1], atol=TOLERANCE["float32_chain"], rtol=0)
    assert grads[0].keys() == grads[1].keys() and any("conv_offset" in k for k in grads[0])
    for k in grads[0]:
        assert_close_scaled(grads[0][k], grads[1][k], "float32_chain", msg=k)
