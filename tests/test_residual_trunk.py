"""vsr_fast::residual_trunk and vsr_fast::propagation_step against the reference trunk (CPU here;
tests/test_residual_trunk_cuda.py covers the two CUDA paths)."""
import pytest
import torch

import vsr_fast
from vsr_fast import reference
from vsr_fast.ops import trunk_parameters

from conftest import TOLERANCE, assert_lowp_close


def make_trunk(in_channels, channels, blocks, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(channels, in_channels, 3, 3, generator=g, dtype=torch.float64) * (scale / (3 * in_channels) ** 0.5)]
    for _ in range(2 * blocks):
        weights.append(torch.randn(channels, channels, 3, 3, generator=g, dtype=torch.float64) * (scale / (3 * channels) ** 0.5))
    biases = [torch.randn(channels, generator=g, dtype=torch.float64) * 0.1 for _ in weights]
    return [w.to(dtype) for w in weights], [b.to(dtype) for b in biases]


def as64(tensors):
    return [t.double() for t in tensors]


def image(shape, dtype=torch.float32, seed=1, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("shape", [(1, 67, 17, 29), (2, 7, 9, 12), (1, 3, 1, 1)], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_trunk_float32_matches_float64_reference(shape, channels_last):
    weights, biases = make_trunk(shape[1], 64 if shape[1] == 67 else 8, blocks=3)
    x = image(shape, channels_last=channels_last)
    out = vsr_fast.residual_trunk(x, weights, biases)
    expected = reference.residual_trunk(x.double(), as64(weights), as64(biases))
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE["float32_chain"], rtol=0)
    # the output keeps the input's memory format
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_trunk_thirty_blocks_matches_the_reference_module():
    trunk = reference.ResidualBlocksWithInputConv(67, 64, num_blocks=30).eval()
    weights, biases = trunk_parameters(trunk)
    x = image((1, 67, 12, 20))
    with torch.no_grad():
        out = vsr_fast.residual_trunk(x, weights, biases)
        expected = trunk.double()(x.double())
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE["float32_chain"], rtol=0)


def test_trunk_float64_is_exact():
    weights, biases = make_trunk(5, 6, blocks=2, dtype=torch.float64)
    x = image((2, 5, 7, 9), torch.float64)
    torch.testing.assert_close(vsr_fast.residual_trunk(x, weights, biases), reference.residual_trunk(x, weights, biases),
                               atol=TOLERANCE["float64"], rtol=0)


def test_trunk_bfloat16_within_twice_the_reference_error():
    weights, biases = make_trunk(7, 16, blocks=2)
    x = image((1, 7, 11, 13))
    bf = [w.bfloat16() for w in weights], [b.bfloat16() for b in biases]
    out = vsr_fast.residual_trunk(x.bfloat16(), *bf)
    assert out.dtype == torch.bfloat16
    assert_lowp_close(out, reference.residual_trunk(x.bfloat16(), *bf), reference.residual_trunk(x.double(), as64(bf[0]), as64(bf[1])))


def test_weights_as_non_contiguous_views():
    weights, biases = make_trunk(5, 8, blocks=2)
    # same values, transposed storage: every weight and bias is a strided view
    w_views = [w.transpose(0, 1).contiguous().transpose(0, 1) for w in weights]
    b_views = [torch.stack([b, b], 1)[:, 0] for b in biases]
    assert not any(w.is_contiguous() for w in w_views) and not any(b.is_contiguous() for b in b_views)
    x = image((1, 5, 9, 10))
    torch.testing.assert_close(vsr_fast.residual_trunk(x, w_views, b_views),
                               vsr_fast.residual_trunk(x, weights, biases), atol=1e-6, rtol=0)


def test_weights_updated_in_place_are_seen():
    """The CPU path caches weights reordered for oneDNN: an in-place update must invalidate them."""
    weights, biases = make_trunk(5, 8, blocks=1)
    x = image((1, 5, 9, 10))
    before = vsr_fast.residual_trunk(x, weights, biases)
    with torch.no_grad():
        weights[1].mul_(-2.0)
    after = vsr_fast.residual_trunk(x, weights, biases)
    torch.testing.assert_close(after.double(), reference.residual_trunk(x.double(), as64(weights), as64(biases)),
                               atol=TOLERANCE["float32_chain"], rtol=0)
    assert not torch.allclose(before, after)
    # a new tensor at a possibly recycled address, with the same version number, is not confused
    del weights[1]
    weights.insert(1, torch.randn(8, 8, 3, 3) * 0.2)
    torch.testing.assert_close(vsr_fast.residual_trunk(x, weights, biases).double(),
                               reference.residual_trunk(x.double(), as64(weights), as64(biases)),
                               atol=TOLERANCE["float32_chain"], rtol=0)


@pytest.mark.parametrize("with_feature", [False, True])
@pytest.mark.parametrize("state_kind", ["none", "unwarped", "warped"])
def test_propagation_step_matches_the_reference_step(with_feature, state_kind):
    c = 16
    lr = image((2, 3, 13, 17), seed=2)
    feature = image((2, c, 13, 17), seed=3) if with_feature else None
    state = None if state_kind == "none" else image((2, c, 13, 17), seed=4) * 2 - 1
    g = torch.Generator().manual_seed(5)
    flow = torch.randn(2, 13, 17, 2, generator=g) * 2 if state_kind == "warped" else None
    weights, biases = make_trunk(3 + c + (c if with_feature else 0), c, blocks=2)
    out = vsr_fast.propagation_step(lr, feature, state, flow, weights, biases)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    expected = reference.propagation_step(lr.double(), d(feature), d(state), d(flow), as64(weights),
                                          as64(biases))
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE["float32_chain"], rtol=0)


def test_propagation_step_is_the_reference_basicvsr_step():
    """One backward-time step of the reference BasicVSR (warp, cat[lr, state], trunk) = the op."""
    model = reference.BasicVSR(mid_channels=16, num_blocks=2).eval()
    weights, biases = trunk_parameters(model.backward_resblocks)
    lr = image((1, 3, 12, 14), seed=6)
    state = image((1, 16, 12, 14), seed=7)
    flow = torch.randn(1, 12, 14, 2, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = model.backward_resblocks(torch.cat([lr, reference.flow_warp(state, flow)], 1))
        out = vsr_fast.propagation_step(lr, None, state, flow, weights, biases)
    torch.testing.assert_close(out, expected, atol=TOLERANCE["float32_chain"], rtol=0)


def test_empty_batch_and_channels_last_output():
    weights, biases = make_trunk(19, 16, blocks=1)
    lr = image((0, 3, 5, 6))
    out = vsr_fast.propagation_step(lr, None, None, None, weights, biases)
    assert out.shape == (0, 16, 5, 6)
    lr_cl = image((1, 3, 5, 6), channels_last=True)
    out = vsr_fast.propagation_step(lr_cl, None, None, None, weights, biases)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_gradcheck_trunk_float64():
    weights, biases = make_trunk(3, 4, blocks=1, dtype=torch.float64)
    x = image((1, 3, 4, 5), torch.float64).requires_grad_()
    params = [t.requires_grad_() for t in weights + biases]

    def fn(x, *p):
        return vsr_fast.residual_trunk(x, list(p[:3]), list(p[3:]))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


def test_gradcheck_propagation_step_float64():
    weights, biases = make_trunk(3 + 2 + 2, 2, blocks=1, dtype=torch.float64)
    lr = image((1, 3, 4, 5), torch.float64).requires_grad_()
    feature = image((1, 2, 4, 5), torch.float64, seed=9).requires_grad_()
    state = image((1, 2, 4, 5), torch.float64, seed=10).requires_grad_()
    # sample points 0.1 .. 0.9 px off the pixel grid, where bilinear warping is differentiable
    g = torch.Generator().manual_seed(11)
    flow = (torch.randint(-1, 2, (1, 4, 5, 2), generator=g) + 0.1 + 0.8 * torch.rand(1, 4, 5, 2, generator=g,
                                                                                    dtype=torch.float64))
    flow.requires_grad_()
    params = [t.requires_grad_() for t in weights + biases]

    def fn(lr, feature, state, flow, *p):
        return vsr_fast.propagation_step(lr, feature, state, flow, list(p[:3]), list(p[3:]))

    assert torch.autograd.gradcheck(fn, (lr, feature, state, flow, *params), eps=1e-6, atol=1e-6)


def test_gradients_match_the_reference_trunk():
    trunk = reference.ResidualBlocksWithInputConv(19, 16, num_blocks=2)
    weights, biases = trunk_parameters(trunk)
    lr = image((1, 3, 10, 11)).requires_grad_()
    state = image((1, 16, 10, 11), seed=12).requires_grad_()
    flow = (torch.randn(1, 10, 11, 2, generator=torch.Generator().manual_seed(13)) * 1.5).requires_grad_()
    grad = torch.randn(1, 16, 10, 11, generator=torch.Generator().manual_seed(14))

    out = vsr_fast.propagation_step(lr, None, state, flow, weights, biases)
    fast = torch.autograd.grad(out, [lr, state, flow, *weights, *biases], grad)
    ref_out = trunk(torch.cat([lr, reference.flow_warp(state, flow)], 1))
    ref = torch.autograd.grad(ref_out, [lr, state, flow, *weights, *biases], grad)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_opcheck():
    weights, biases = make_trunk(5, 4, blocks=1)
    x = image((1, 5, 6, 7)).requires_grad_()
    params = [t.clone().requires_grad_() for t in weights], [t.clone().requires_grad_() for t in biases]
    torch.library.opcheck(torch.ops.vsr_fast.residual_trunk.default, (x, *params))
    torch.library.opcheck(torch.ops.vsr_fast.residual_trunk.default,
                          (image((1, 5, 6, 7), channels_last=True), weights, biases))
    w2, b2 = make_trunk(3 + 4 + 4, 4, blocks=1)
    lr, feature, state = image((1, 3, 6, 7)), image((1, 4, 6, 7), seed=2), image((1, 4, 6, 7), seed=3)
    flow = torch.randn(1, 6, 7, 2)
    for args in [(lr, feature, state, flow, w2, b2), (lr, feature, None, None, w2, b2),
                 (lr.requires_grad_(), feature, state.requires_grad_(), flow.requires_grad_(), w2, b2)]:
        torch.library.opcheck(torch.ops.vsr_fast.propagation_step.default, args)


def test_torch_compile_fullgraph():
    weights, biases = make_trunk(19, 16, blocks=1)
    lr, state = image((1, 3, 8, 9)), image((1, 16, 8, 9), seed=2)
    flow = torch.randn(1, 8, 9, 2)

    def step(lr, state, flow):
        return vsr_fast.propagation_step(lr, None, state, flow, weights, biases) * 0.5

    compiled = torch.compile(step, fullgraph=True)
    torch.testing.assert_close(compiled(lr, state, flow), step(lr, state, flow), atol=0, rtol=0)


@pytest.mark.parametrize("call, message", [
    (lambda w, b: vsr_fast.residual_trunk(torch.rand(5, 6, 7), w, b), r"expected x \[N, C_in, H, W\]"),
    (lambda w, b: vsr_fast.residual_trunk(torch.rand(1, 4, 6, 7), w, b), r"weights\[0\] must be \[8, 4, 3, 3\], got \[8, 5, 3, 3\]"),
    (lambda w, b: vsr_fast.residual_trunk(torch.rand(1, 5, 6, 7), w[:2], b[:2]), "1 \\+ 2 \\* num_blocks"),
    (lambda w, b: vsr_fast.residual_trunk(torch.rand(1, 5, 6, 7), w, b[:1]), "one bias per weight"),
    (lambda w, b: vsr_fast.residual_trunk(torch.rand(1, 5, 6, 7, dtype=torch.float64), w, b), "dtype"),
    (lambda w, b: vsr_fast.residual_trunk(torch.rand(1, 5, 6, 7), w[:1] + [w[1][:, :4]] + w[2:], b),
     r"weights\[1\] must be \[8, 8, 3, 3\]"),
    (lambda w, b: vsr_fast.propagation_step(torch.rand(1, 3, 6, 7), None, torch.rand(1, 8, 6, 8), None, w, b),
     r"expected state \[N, \*, H, W\] matching lr"),
    (lambda w, b: vsr_fast.propagation_step(torch.rand(1, 3, 6, 7), None, None, torch.rand(1, 6, 7, 2), w, b),
     "a flow needs a state"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    weights, biases = make_trunk(5, 8, blocks=1)
    with pytest.raises(RuntimeError, match="vsr_fast::(residual_trunk|propagation_step)") as info:
        call(weights, biases)
    info.match(message)


# ---- whole propagation loops: the reference models with their steps replaced by the ops -----------

class _OpStepsBasicVSR(reference.BasicVSR):
    def backward_step(self, lr, feat_prop, flow=None):
        return vsr_fast.propagation_step(lr, None, feat_prop, None if flow is None else flow.permute(0, 2, 3, 1),
                                         *trunk_parameters(self.backward_resblocks))

    def forward_step(self, lr, feat_prop, flow=None):
        return vsr_fast.propagation_step(lr, None, feat_prop, None if flow is None else flow.permute(0, 2, 3, 1),
                                         *trunk_parameters(self.forward_resblocks))


class _OpStepsIconVSR(reference.IconVSR):
    def _state(self, feat_prop, flow, feat_refill, fusion):
        if flow is not None:
            feat_prop = vsr_fast.flow_warp(feat_prop, flow.permute(0, 2, 3, 1))
        if feat_refill is not None:
            feat_prop = vsr_fast.keyframe_fusion(feat_prop, feat_refill, fusion.weight, fusion.bias)
        return feat_prop

    def _step(self, lr, feature, feat_prop, flow, feat_refill, fusion, trunk):
        if feat_refill is None:  # the op warps
            return vsr_fast.propagation_step(lr, feature, feat_prop, None if flow is None else flow.permute(0, 2, 3, 1),
                                             *trunk_parameters(trunk))
        state = self._state(feat_prop, flow, feat_refill, fusion)
        return vsr_fast.propagation_step(lr, feature, state, None, *trunk_parameters(trunk))

    def backward_step(self, lr, feat_prop, flow=None, feat_refill=None):
        return self._step(lr, None, feat_prop, flow, feat_refill, self.backward_fusion, self.backward_resblocks)

    def forward_step(self, lr, feat_backward, feat_prop, flow=None, feat_refill=None):
        return self._step(lr, feat_backward, feat_prop, flow, feat_refill, self.forward_fusion,
                          self.forward_resblocks)


@pytest.mark.parametrize("model_cls, ops_cls, kwargs, frames", [
    (reference.BasicVSR, _OpStepsBasicVSR, dict(mid_channels=16, num_blocks=2), 6),
    (reference.IconVSR, _OpStepsIconVSR, dict(mid_channels=16, num_blocks=2, padding=2), 7),
])
def test_reference_propagation_loop_with_the_ops(model_cls, ops_cls, kwargs, frames):
    """The full recurrent loops (flows, both passes, refill fusion, reconstruction) with every step
    replaced by the ops give the reference model's output."""
    torch.manual_seed(0)
    model = model_cls(**kwargs).eval()
    with_ops = ops_cls(**kwargs).eval()
    with_ops.load_state_dict(model.state_dict())
    lrs = torch.rand(1, frames, 3, 20, 24)
    with torch.no_grad(), pytest.warns(UserWarning, match="designed for inputs"):
        expected = model.double()(lrs.double())
        out = with_ops(lrs)
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE["float32_chain"], rtol=0)
