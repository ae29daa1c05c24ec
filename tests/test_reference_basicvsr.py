"""Reference BasicVSR: keys, sizes, shapes, precision, mirror shortcut."""

import copy
import warnings

import pytest
import torch

from vsr_fast.reference import (
    BasicVSR,
    PixelShufflePack,
    ResidualBlockNoBN,
    ResidualBlocksWithInputConv,
    propagation_step,
    residual_trunk,
)

from _helpers import assert_close


def _state_shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _small(seed=0, **kw):
    torch.manual_seed(seed)
    return BasicVSR(mid_channels=kw.pop("mid_channels", 16), num_blocks=kw.pop("num_blocks", 2)).eval()


def test_keys_and_shapes_equal_mmagic(spec_keys):
    model = BasicVSR()
    assert _state_shapes(model) == spec_keys("mmagic_BasicVSRNet_c64b30")


def test_parameter_counts():
    model = BasicVSR()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == 6_291_311
    assert count(model.spynet) == 1_440_300
    assert count(model.backward_resblocks) == count(model.forward_resblocks) == 2_254_336
    assert count(model.fusion) == 8_256
    assert count(model.upsample1) == count(model.upsample2) == 147_712
    assert count(model.conv_hr) == 36_928 and count(model.conv_last) == 1_731
    assert model.fusion.kernel_size == (1, 1)


def test_building_blocks():
    trunk = ResidualBlocksWithInputConv(19, 16, 3)
    assert len(trunk.main) == 3 and isinstance(trunk.main[2][2], ResidualBlockNoBN)
    assert trunk.main[1].negative_slope == 0.1
    # pixel shuffle keeps PyTorch's channel order: out[c, 2y+i, 2x+j] = conv[4c + 2i + j, y, x]
    up = PixelShufflePack(4, 2, 2, upsample_kernel=3)
    x = torch.randn(1, 4, 3, 5)
    conv = up.upsample_conv(x)
    out = up(x)
    assert out.shape == (1, 2, 6, 10)
    assert torch.equal(out[0, 1, 2 * 1 + 1, 2 * 3 + 0], conv[0, 4 * 1 + 2 * 1 + 0, 1, 3])
    # residual block: x + conv2(relu(conv1(x)))
    block = ResidualBlockNoBN(4)
    ref = x + block.conv2(torch.relu(block.conv1(x)))
    torch.testing.assert_close(block(x), ref)


@pytest.mark.parametrize("n,t,h,w", [(2, 1, 64, 64), (1, 2, 64, 72), (1, 3, 65, 67)])
def test_output_shape_any_t(n, t, h, w):
    model = _small()
    with torch.no_grad():
        out = model(torch.rand(n, t, 3, h, w))
    assert out.shape == (n, t, 3, 4 * h, 4 * w)
    assert torch.isfinite(out).all()


def test_single_frame_is_the_two_trunks_on_a_zero_state():
    model = _small()
    lr = torch.rand(1, 1, 3, 64, 64)
    zero = torch.zeros(1, 16, 64, 64)
    with torch.no_grad():
        b = model.backward_resblocks(torch.cat([lr[:, 0], zero], 1))
        f = model.forward_resblocks(torch.cat([lr[:, 0], zero], 1))
        ref = model.reconstruct(model.fuse(b, f), lr[:, 0])
        torch.testing.assert_close(model(lr)[:, 0], ref, rtol=0, atol=0)


def test_float32_matches_float64():
    model = _small()
    x = torch.rand(1, 5, 3, 64, 64)
    with torch.no_grad():
        out32 = model(x)
        out64 = copy.deepcopy(model).double()(x.double())
    assert_close(out32, out64, "float32_chain")


def test_mirror_shortcut_equals_full_computation():
    model = _small()
    half = torch.rand(1, 3, 3, 64, 64)
    lrs = torch.cat([half, half.flip(1)], 1)
    with torch.no_grad():
        shortcut = model(lrs)
        assert model.is_mirror_extended
        full_model = copy.deepcopy(model)

        def never_mirrored(x):  # force both flow directions to be computed
            full_model.is_mirror_extended = False
            return False

        full_model.check_if_mirror_extended = never_mirrored
        full = full_model(lrs)
    assert not full_model.is_mirror_extended
    assert_close(shortcut, full, "float32")


def test_mirror_detection_is_exact():
    model = _small()
    half = torch.rand(1, 2, 3, 8, 8)
    lrs = torch.cat([half, half.flip(1)], 1)
    assert model.check_if_mirror_extended(lrs)
    lrs[0, -1, 0, 0, 0] += 1e-6
    assert not model.check_if_mirror_extended(lrs)
    assert not model.check_if_mirror_extended(torch.rand(1, 3, 3, 8, 8))  # odd t


def test_small_input_warns_once():
    model = _small()
    with pytest.warns(UserWarning, match="at least 64x64"):
        with torch.no_grad():
            model(torch.rand(1, 2, 3, 32, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model(torch.rand(1, 2, 3, 32, 40))  # second time: silent
            _small()(torch.rand(1, 1, 3, 64, 64))  # large enough: silent


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 2, 1, 64, 64), (1, 0, 3, 64, 64)])
def test_bad_input_raises(shape):
    with pytest.raises(ValueError, match="BasicVSR"):
        _small()(torch.rand(shape))


def test_step_helpers_rebuild_the_forward_pass():
    # the pieces a fast model reuses, put together by hand, give the same frames
    model = _small()
    lrs = torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        model.check_if_mirror_extended(lrs)
        ff, fb = model.compute_flow(lrs)
        b2 = model.backward_step(lrs[:, 2], torch.zeros(1, 16, 64, 64))
        b1 = model.backward_step(lrs[:, 1], b2, fb[:, 1])
        f0 = model.forward_step(lrs[:, 0], torch.zeros(1, 16, 64, 64))
        f1 = model.forward_step(lrs[:, 1], f0, ff[:, 0])
        out1 = model.reconstruct(model.fuse(b1, f1), lrs[:, 1])
        torch.testing.assert_close(model(lrs)[:, 1], out1, rtol=0, atol=0)


def test_functional_trunk_and_step_are_the_model_s():
    """reference.residual_trunk / propagation_step, the ops' spec, compute exactly what the model's
    trunk module and step methods compute."""
    model = _small().double()
    g = torch.Generator().manual_seed(3)
    lr = torch.rand(2, 3, 24, 28, generator=g, dtype=torch.float64)
    state = torch.rand(2, 16, 24, 28, generator=g, dtype=torch.float64) * 2 - 1
    flow = torch.randn(2, 2, 24, 28, generator=g, dtype=torch.float64) * 3
    zero = torch.zeros_like(state)
    for trunk, step in (
        (model.backward_resblocks, model.backward_step),
        (model.forward_resblocks, model.forward_step),
    ):
        weights, biases = trunk.trunk_parameters()
        with torch.no_grad():
            x = torch.cat([lr, state], 1)
            assert torch.equal(residual_trunk(x, weights, biases), trunk(x))
            assert torch.equal(
                propagation_step(lr, None, state, flow.permute(0, 2, 3, 1), weights, biases),
                step(lr, state, flow),
            )
            assert torch.equal(propagation_step(lr, None, state, None, weights, biases), step(lr, state))
            assert torch.equal(propagation_step(lr, None, None, None, weights, biases), step(lr, zero))
