"""vsr_fast::keyframe_fusion against IconVSR's fusion conv (reference: conv over the concatenation)."""

import pytest
import torch

import vsr_fast
from vsr_fast import reference

from _helpers import (
    TOLERANCE,
    assert_fake_raises_like_real,
    assert_gradcheck,
    assert_mixed_meta_refused,
    poisoned_allocations,
)


def inputs(device, dtype=torch.float32, n=2, c=16, h=9, w=13, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
    state, refill = make(n, c, h, w), make(n, c, h, w)
    if channels_last:
        state = state.contiguous(memory_format=torch.channels_last)
        refill = refill.contiguous(memory_format=torch.channels_last)
    return state, refill, make(c, 2 * c, 3, 3) * 0.1, make(c) * 0.1


@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_the_reference_fusion(device, channels_last):
    state, refill, weight, bias = inputs(device, channels_last=channels_last)
    out = vsr_fast.keyframe_fusion(state, refill, weight, bias)
    expected = reference.keyframe_fusion(*(t.double() for t in (state, refill, weight, bias)))
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE["float32_chain"], rtol=0)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_is_iconvsr_fusion_conv():
    model = reference.IconVSR(mid_channels=16, num_blocks=1, keyframe_stride=5, padding=2)
    state, refill, _, _ = inputs("cpu", c=16)
    with torch.no_grad():
        expected = model.backward_fusion(torch.cat([state, refill], 1))
        out = vsr_fast.keyframe_fusion(
            state, refill, model.backward_fusion.weight, model.backward_fusion.bias
        )
    torch.testing.assert_close(out, expected, atol=TOLERANCE["float32_chain"], rtol=0)


def test_float64_and_gradcheck(device):
    state, refill, weight, bias = (
        t.requires_grad_() for t in inputs(device, torch.float64, n=1, c=2, h=4, w=5)
    )
    torch.testing.assert_close(
        vsr_fast.keyframe_fusion(state, refill, weight, bias),
        reference.keyframe_fusion(state, refill, weight, bias),
        atol=TOLERANCE["float64"],
        rtol=0,
    )
    assert_gradcheck(vsr_fast.keyframe_fusion, (state, refill, weight, bias))


@pytest.mark.parametrize("channels_last", [False, True])
def test_every_output_element_is_written(device, channels_last):
    """Every buffer the op allocates starts out NaN (poisoned_allocations): an output element its two
    half-convolutions never write comes back NaN."""
    args = inputs(device, channels_last=channels_last)
    with poisoned_allocations():
        out = vsr_fast.keyframe_fusion(*args)
    assert torch.isfinite(out).all()


def test_weight_updates_are_seen(device):
    state, refill, weight, bias = inputs(device)
    vsr_fast.keyframe_fusion(state, refill, weight, bias)
    with torch.no_grad():
        weight[:, 16:].mul_(3.0)  # only the refill half, which the CPU path packs separately
    torch.testing.assert_close(
        vsr_fast.keyframe_fusion(state, refill, weight, bias).double(),
        reference.keyframe_fusion(*(t.double() for t in (state, refill, weight, bias))),
        atol=TOLERANCE["float32_chain"],
        rtol=0,
    )


def test_opcheck_and_errors(device):
    state, refill, weight, bias = inputs(device, n=1, c=4, h=5, w=6)
    torch.library.opcheck(
        torch.ops.vsr_fast.keyframe_fusion.default,
        (state.requires_grad_(), refill, weight.requires_grad_(), bias),
    )
    with pytest.raises(RuntimeError, match=r"vsr_fast::keyframe_fusion: expected state .* of one size"):
        vsr_fast.keyframe_fusion(state, refill[..., :5], weight, bias)
    with pytest.raises(RuntimeError, match=r"vsr_fast::keyframe_fusion: weights\[0\] must be \[4, 8, 3, 3\]"):
        vsr_fast.keyframe_fusion(state, refill, weight[:, :7], bias)


def test_bad_inputs_fake_like_real_mixed_meta_and_none():
    """Regressions: the fake kernel checked nothing (a meta tensor among CPU ones gave uninitialised
    memory); bias=None said "biases[0] must be [4], got [0]"."""
    state, refill, weight, bias = inputs("cpu", n=1, c=4, h=5, w=6)
    assert_mixed_meta_refused(
        "vsr_fast::keyframe_fusion", vsr_fast.keyframe_fusion, state, refill, weight, bias
    )
    assert_fake_raises_like_real(vsr_fast.keyframe_fusion, state, refill[..., :5], weight, bias)
    assert_fake_raises_like_real(vsr_fast.keyframe_fusion, state, refill, weight[:, :7], bias)
    assert_fake_raises_like_real(vsr_fast.keyframe_fusion, state, refill.double(), weight, bias)
    with pytest.raises(TypeError, match=r"vsr_fast::keyframe_fusion: bias must be a tensor, got None"):
        vsr_fast.keyframe_fusion(state, refill, weight, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_a_half_without_channels(dtype):
    """A refill (or state) of 0 channels: oneDNN cannot describe that convolution; the op falls back
    and still matches the reference."""
    state, refill, weight, bias = inputs("cpu", dtype=dtype, n=1, c=4, h=5, w=6)
    for s, r, w in ((state, refill[:, :0], weight[:, :4]), (state[:, :0], refill, weight[:, 4:])):
        torch.testing.assert_close(
            vsr_fast.keyframe_fusion(s, r, w.contiguous(), bias).double(),
            reference.keyframe_fusion(*(t.double() for t in (s, r, w, bias))),
            atol=TOLERANCE["float32_chain"],
            rtol=0,
        )
