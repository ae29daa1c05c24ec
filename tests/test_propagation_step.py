"""vsr_fast::propagation_step (warp + concat + trunk in one op) against the reference step
(vsr_fast.reference.propagation_step and the reference models' step methods), on CPU and on each
CUDA trunk path."""

import copy

import pytest
import torch

import vsr_fast
from vsr_fast import reference

from _helpers import (
    assert_close,
    assert_close_scaled,
    assert_fake_raises_like_real,
    assert_gradcheck,
    assert_layout_like_fake,
    assert_lowp_close,
    assert_mixed_meta_refused,
    assert_onednn_bf16_refused,
    force_onednn_bf16,
    fused_capable,
    image,
    make_trunk,
    poisoned_allocations,
    to,
)

LOWP = [torch.float16, torch.bfloat16]


def step_inputs(n, c, h, w, with_feature, state_kind, seed):
    """float64 CPU lr, feature (or None), state (None for "none") and flow (None unless "warped")."""
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(n, 3, h, w, generator=g, dtype=torch.float64)
    feature = torch.rand(n, c, h, w, generator=g, dtype=torch.float64) if with_feature else None
    state = torch.rand(n, c, h, w, generator=g, dtype=torch.float64) * 2 - 1 if state_kind != "none" else None
    flow = torch.randn(n, h, w, 2, generator=g, dtype=torch.float64) * 2 if state_kind == "warped" else None
    return lr, feature, state, flow


def flow_dtype_for(dtype):
    return torch.float32 if dtype in LOWP else dtype


@pytest.mark.parametrize("dtype", [torch.float32] + LOWP, ids=str)
@pytest.mark.parametrize("with_feature", [False, True], ids=["basicvsr", "iconvsr"])
@pytest.mark.parametrize("state_kind", ["none", "unwarped", "warped"])
def test_matches_the_reference_step(trunk_path, dtype, with_feature, state_kind):
    device, impl = trunk_path
    if impl == "fused" and dtype == torch.float32:
        pytest.skip("forced fused rejects float32 (tests/test_residual_trunk.py checks the error)")
    c = 64
    lr, feature, state, flow = step_inputs(2, c, 13, 21, with_feature, state_kind, seed=3)
    weights, biases = make_trunk(3 + c + (c if with_feature else 0), c, blocks=2)
    expected = reference.propagation_step(lr, feature, state, flow, weights, biases)
    args = (
        *to([lr, feature, state], device, dtype),
        *to([flow], device, flow_dtype_for(dtype)),
        to(weights, device, dtype),
        to(biases, device, dtype),
    )
    out = vsr_fast.propagation_step(*args)
    assert_layout_like_fake(out, args[0])
    if dtype == torch.float32:
        assert_close(out.cpu(), expected, "float32_chain")
    else:
        assert_lowp_close(out, reference.propagation_step(*args), expected)


@pytest.mark.parametrize("with_feature", [False, True], ids=["basicvsr", "iconvsr"])
def test_bfloat16_onednn_path_when_forced(monkeypatch, with_feature):
    """bf16 through oneDNN's fused trunk (taken by itself on CPUs with bf16 hardware), forced here."""
    c = 64
    lr, feature, state, flow = step_inputs(2, c, 13, 21, with_feature, "warped", seed=4)
    weights, biases = make_trunk(3 + c + (c if with_feature else 0), c, blocks=2)
    expected = reference.propagation_step(lr, feature, state, flow, weights, biases)
    args = (
        *to([lr, feature, state], "cpu", torch.bfloat16),
        flow.float(),
        to(weights, "cpu", torch.bfloat16),
        to(biases, "cpu", torch.bfloat16),
    )
    if not force_onednn_bf16(monkeypatch):
        assert_onednn_bf16_refused(lambda: vsr_fast.propagation_step(*args))
        return
    out = vsr_fast.propagation_step(*args)
    assert_layout_like_fake(out, args[0])
    assert_lowp_close(out, reference.propagation_step(*args), expected)


def test_is_the_reference_basicvsr_step(device):
    """One backward-time step of the reference BasicVSR (warp, cat[lr, state], trunk) = the op."""
    torch.manual_seed(0)
    model = reference.BasicVSR(mid_channels=16, num_blocks=2).eval().to(device)
    lr = image((1, 3, 12, 14), seed=6, dtype=torch.float32).to(device)
    state = image((1, 16, 12, 14), seed=7, dtype=torch.float32).to(device)
    flow = torch.randn(1, 2, 12, 14, generator=torch.Generator().manual_seed(8)).to(device)
    with torch.no_grad():
        out = vsr_fast.propagation_step(
            lr, None, state, flow.permute(0, 2, 3, 1), *model.backward_resblocks.trunk_parameters()
        )
        model64 = copy.deepcopy(model).double()
        expected = model64.backward_step(lr.double(), state.double(), flow.double())
    assert_close(out.cpu(), expected.cpu(), "float32_chain")


def test_warped_state_is_flow_warp_bit_for_bit(device, monkeypatch):
    """The warp written into the trunk input is vsr_fast.flow_warp's maths exactly: with an input
    conv that copies the state channels (centre tap 1) and no blocks, the step returns
    leaky_relu(flow_warp(state)) = flow_warp(state) for a positive state (float64: exact convs)."""
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "library")
    n, h, w, c = 2, 11, 19, 8
    g = torch.Generator().manual_seed(4)
    lr = torch.rand(n, 3, h, w, generator=g, dtype=torch.float64).to(device)
    state = (torch.rand(n, c, h, w, generator=g, dtype=torch.float64) + 0.5).to(device)
    flow = (torch.randn(n, h, w, 2, generator=g, dtype=torch.float64) * 3).to(device)
    w0 = torch.zeros(c, 3 + c, 3, 3, dtype=torch.float64, device=device)
    w0[torch.arange(c), 3 + torch.arange(c), 1, 1] = 1
    b0 = torch.zeros(c, dtype=torch.float64, device=device)
    out = vsr_fast.propagation_step(lr, None, state, flow, [w0], [b0])
    warped = vsr_fast.flow_warp(state, flow)
    assert torch.equal(out, torch.nn.functional.leaky_relu(warped, 0.1))


def test_empty_batch_and_channels_last_output(device):
    weights, biases = (to(p, device, torch.float32) for p in make_trunk(19, 16, blocks=1))
    lr = image((0, 3, 5, 6), dtype=torch.float32).to(device)
    out = vsr_fast.propagation_step(lr, None, None, None, weights, biases)
    assert out.shape == (0, 16, 5, 6)
    lr_cl = image((1, 3, 5, 6), dtype=torch.float32).to(device).contiguous(memory_format=torch.channels_last)
    out = vsr_fast.propagation_step(lr_cl, None, None, None, weights, biases)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("state_kind", ["none", "unwarped", "warped"])
def test_every_output_element_is_written(device, state_kind):
    """Every buffer the op allocates (the trunk's input, which the step assembles slice by slice, and
    the outputs) starts out NaN: an element nobody writes comes back NaN."""
    c = 16
    lr, feature, state, flow = step_inputs(2, c, 9, 13, True, state_kind, seed=5)
    weights, biases = make_trunk(3 + 2 * c, c, blocks=1)
    args = (
        *to([lr, feature, state, flow], device, torch.float32),
        to(weights, device, torch.float32),
        to(biases, device, torch.float32),
    )
    with poisoned_allocations():
        out = vsr_fast.propagation_step(*args)
    assert torch.isfinite(out).all()


def test_gradcheck_float64():
    weights, biases = make_trunk(3 + 2 + 2, 2, blocks=1)
    lr = image((1, 3, 4, 5)).requires_grad_()
    feature = image((1, 2, 4, 5), seed=9).requires_grad_()
    state = image((1, 2, 4, 5), seed=10).requires_grad_()
    # sample points 0.1 .. 0.9 px off the pixel grid, where bilinear warping is differentiable
    g = torch.Generator().manual_seed(11)
    flow = (
        torch.randint(-1, 2, (1, 4, 5, 2), generator=g)
        + 0.1
        + 0.8 * torch.rand(1, 4, 5, 2, generator=g, dtype=torch.float64)
    )
    flow.requires_grad_()
    params = [t.requires_grad_() for t in weights + biases]

    def fn(lr, feature, state, flow, *p):
        return vsr_fast.propagation_step(lr, feature, state, flow, list(p[:3]), list(p[3:]))

    assert_gradcheck(fn, (lr, feature, state, flow, *params))


def test_gradients_match_the_reference_modules(device):
    """float32 gradients of the op, for every input, against autograd through the reference trunk
    module and reference flow_warp in float64."""
    torch.manual_seed(12)
    trunk = reference.ResidualBlocksWithInputConv(19, 16, num_blocks=2)
    g = torch.Generator().manual_seed(13)
    lr, state = (
        image((1, 3, 10, 11), dtype=torch.float32),
        image((1, 16, 10, 11), seed=12, dtype=torch.float32),
    )
    flow = torch.randn(1, 10, 11, 2, generator=g) * 1.5
    grad = torch.randn(1, 16, 10, 11, generator=g)

    weights, biases = (to([t.detach() for t in p], device, torch.float32) for p in trunk.trunk_parameters())
    inputs = [t.to(device).requires_grad_() for t in (lr, state, flow, *weights, *biases)]
    out = vsr_fast.propagation_step(inputs[0], None, inputs[1], inputs[2], inputs[3:8], inputs[8:])
    fast = torch.autograd.grad(out, inputs, grad.to(device))

    trunk64 = copy.deepcopy(trunk).double()
    ref_inputs = [t.double().requires_grad_() for t in (lr, state, flow)]
    w64, b64 = trunk64.trunk_parameters()
    ref_out = trunk64(torch.cat([ref_inputs[0], reference.flow_warp(ref_inputs[1], ref_inputs[2])], 1))
    ref = torch.autograd.grad(ref_out, [*ref_inputs, *w64, *b64], grad.double())
    for a, b in zip(fast, ref):
        assert_close_scaled(a.cpu(), b, "float32_chain")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_opcheck(trunk_path, dtype):
    device, impl = trunk_path
    if impl == "fused" and dtype == torch.float32:
        pytest.skip("forced fused rejects float32 (tests/test_residual_trunk.py checks the error)")
    grad = dtype == torch.float32
    for with_feature in (False, True):
        c = 64
        lr, feature, state, flow = step_inputs(1, c, 9, 11, with_feature, "warped", seed=10)
        weights, biases = make_trunk(3 + c + (c if with_feature else 0), c, blocks=1)
        ws = [w.requires_grad_(grad) for w in to(weights, device, dtype)]
        bs = [b.requires_grad_(grad) for b in to(biases, device, dtype)]
        lr, feature, state = to([lr, feature, state], device, dtype)
        flow = flow.to(device, flow_dtype_for(dtype))
        for args in [(lr, feature, None, None), (lr, feature, state, None), (lr, feature, state, flow)]:
            args = tuple(None if t is None else t.detach().requires_grad_(grad) for t in args)
            torch.library.opcheck(torch.ops.vsr_fast.propagation_step.default, (*args, ws, bs))


def test_torch_compile_fullgraph(device):
    weights, biases = (to(p, device, torch.float32) for p in make_trunk(19, 16, blocks=1))
    lr, state = (
        image(s, seed=i, dtype=torch.float32).to(device) for i, s in enumerate([(1, 3, 8, 9), (1, 16, 8, 9)])
    )
    flow = torch.randn(1, 8, 9, 2, generator=torch.Generator().manual_seed(3)).to(device)

    def step(lr, state, flow):
        return vsr_fast.propagation_step(lr, None, state, flow, weights, biases) * 0.5

    compiled = torch.compile(step, fullgraph=True)
    torch.testing.assert_close(compiled(lr, state, flow), step(lr, state, flow), atol=0, rtol=0)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda w, b: vsr_fast.propagation_step(
                torch.rand(1, 3, 6, 7), None, torch.rand(1, 8, 6, 8), None, w, b
            ),
            r"expected state \[N, \*, H, W\] matching lr",
        ),
        (
            lambda w, b: vsr_fast.propagation_step(
                torch.rand(1, 3, 6, 7), None, None, torch.rand(1, 6, 7, 2), w, b
            ),
            "a flow needs a state",
        ),
        (
            lambda w, b: vsr_fast.propagation_step(
                torch.rand(1, 3, 6, 7), None, torch.rand(1, 8, 6, 7), torch.rand(1, 6, 8, 2), w, b
            ),
            r"expected flow \[N, H, W, 2\] matching lr",
        ),
        (
            lambda w, b: vsr_fast.propagation_step(torch.rand(1, 3, 6, 7), None, None, None, w, b),
            r"weights\[0\] must be \[8, 11, 3, 3\], got \[8, 12, 3, 3\]",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    weights, biases = make_trunk(12, 8, blocks=1)
    w, b = to(weights, "cpu", torch.float32), to(biases, "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="vsr_fast::propagation_step") as info:
        call(w, b)
    info.match(message)
    # the fake kernel refuses the same inputs with the same words
    assert_fake_raises_like_real(call, w, b)


def test_mixed_meta_and_cpu_inputs_and_none_are_refused():
    """Regression: a meta tensor among CPU ones made the fake kernel return uninitialised memory."""
    weights, biases = make_trunk(3 + 8 + 8, 8, blocks=1)
    w, b = to(weights, "cpu", torch.float32), to(biases, "cpu", torch.float32)
    lr, feature, state, flow = to(step_inputs(1, 8, 6, 7, True, "warped", seed=2), "cpu", torch.float32)
    assert_mixed_meta_refused(
        "vsr_fast::propagation_step", vsr_fast.propagation_step, lr, feature, state, flow, w, b
    )
    with pytest.raises(TypeError, match=r"vsr_fast::propagation_step: lr must be a tensor, got None"):
        vsr_fast.propagation_step(None, feature, state, flow, w, b)
    with pytest.raises(TypeError, match=r"vsr_fast::propagation_step: weights\[2\] must be a tensor"):
        vsr_fast.propagation_step(lr, feature, state, flow, w[:2] + [None], b)


# ---- CUDA only -------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("impl", ["library", "fused", "auto"])
def test_cuda_graph_replay_equals_eager(monkeypatch, impl, dtype):
    if impl == "fused" and not (fused_capable() and dtype in LOWP):
        pytest.skip(
            "forced fused needs sm_80+ and rejects float32 (tests/test_residual_trunk.py checks the error)"
        )
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", impl)
    weights, biases = make_trunk(3 + 64, 64, blocks=2)
    wl, bl = to(weights, "cuda", dtype), to(biases, "cuda", dtype)

    def inputs(seed):
        lr, _, state, flow = step_inputs(1, 64, 19, 23, False, "warped", seed)
        return (*to([lr, state], "cuda", dtype), flow.to("cuda", flow_dtype_for(dtype)))

    lr, state, flow = inputs(7)
    step = lambda: vsr_fast.propagation_step(lr, None, state, flow, wl, bl)  # noqa: E731
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: cuDNN plans, the fused self-check
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    for static, new in zip((lr, state, flow), inputs(8)):
        static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, step(), atol=0, rtol=0)
