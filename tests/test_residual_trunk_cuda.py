"""The CUDA kernels of vsr_fast::residual_trunk and vsr_fast::propagation_step: the cuDNN library path
and the fused tensor-core residual-block kernel (VSR_FAST_TRUNK_IMPL=library|fused|auto), against the
float64 reference (DESIGN.md §6). Skipped without a GPU; fails if a GPU is present but the build has
no CUDA kernels. The CPU kernels are covered by tests/test_residual_trunk.py."""
import warnings

import pytest
import torch

import vsr_fast
from vsr_fast import reference

from conftest import TOLERANCE, assert_lowp_close

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]

LOWP = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _cuda_build():
    if not vsr_fast.build_info()["cuda"]:
        pytest.fail("a CUDA GPU is present but vsr_fast was built without CUDA kernels "
                    "(reinstall with VSR_FAST_CUDA=1)")


def fused_capable():
    return torch.cuda.get_device_capability()[0] >= 8


@pytest.fixture(params=["library", "fused", "auto"])
def impl(request, monkeypatch):
    """Every test taking `impl` runs once per path; `fused` is skipped below sm_80 (it has no kernel
    there) and, being forced, raises for inputs it does not support."""
    if request.param == "fused" and not fused_capable():
        pytest.skip("the fused residual-block kernel needs compute capability >= 8.0")
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", request.param)
    return request.param


def make_trunk(in_channels, channels, blocks, seed=0):
    """float64 CPU weights with ~variance-preserving scale, so 3-block trunks stay of magnitude ~1."""
    g = torch.Generator().manual_seed(seed)
    fan = lambda c: (9 * c) ** -0.5  # noqa: E731
    weights = [torch.randn(channels, in_channels, 3, 3, generator=g, dtype=torch.float64) * fan(in_channels)]
    weights += [torch.randn(channels, channels, 3, 3, generator=g, dtype=torch.float64) * fan(channels)
                for _ in range(2 * blocks)]
    biases = [torch.randn(channels, generator=g, dtype=torch.float64) * 0.1 for _ in weights]
    return weights, biases


def to(tensors, dtype, device="cuda"):
    return [t.to(device, dtype) for t in tensors]


def image(shape, seed=1, low=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * (1 - low) + low


def assert_layout_like_fake(out, x):
    """The op's output strides are the fake kernel's: torch.empty in suggest_memory_format(x)."""
    from torch._prims_common import suggest_memory_format
    ref = torch.empty(out.shape, dtype=out.dtype, device=out.device, memory_format=suggest_memory_format(x))
    assert out.stride() == ref.stride(), (out.stride(), ref.stride())


SHAPES = [(2, 67, 17, 29), (1, 64, 8, 16), (1, 64, 9, 17), (1, 3, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("blocks", [0, 3])
def test_cuda_float32_matches_float64_reference(impl, shape, channels_last, blocks):
    weights, biases = make_trunk(shape[1], 64, blocks)
    x = image(shape)
    expected = reference.residual_trunk(x, weights, biases)
    xc = x.to("cuda", torch.float32)
    if channels_last:
        xc = xc.contiguous(memory_format=torch.channels_last)
    if impl == "fused" and blocks > 0:
        with pytest.raises(RuntimeError, match="VSR_FAST_TRUNK_IMPL=fused.*float16 or bfloat16"):
            vsr_fast.residual_trunk(xc, to(weights, torch.float32), to(biases, torch.float32))
        return
    out = vsr_fast.residual_trunk(xc, to(weights, torch.float32), to(biases, torch.float32))
    assert_layout_like_fake(out, xc)
    torch.testing.assert_close(out.double().cpu(), expected, atol=TOLERANCE["float32_chain"], rtol=0)


@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_half_precision_within_twice_the_reference_error(impl, dtype, shape, channels_last):
    weights, biases = make_trunk(shape[1], 64, blocks=3)
    x = image(shape)
    expected = reference.residual_trunk(x, weights, biases)
    xl = x.to("cuda", dtype)
    if channels_last:
        xl = xl.contiguous(memory_format=torch.channels_last)
    wl, bl = to(weights, dtype), to(biases, dtype)
    out = vsr_fast.residual_trunk(xl, wl, bl)
    assert_layout_like_fake(out, xl)
    reference_lowp = reference.residual_trunk(xl, wl, bl)
    assert_lowp_close(out.cpu(), reference_lowp.cpu(), expected)


def test_cuda_float64_library_path(monkeypatch):
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "auto")
    weights, biases = make_trunk(5, 6, blocks=2)
    x = image((2, 5, 7, 9))
    out = vsr_fast.residual_trunk(x.cuda(), to(weights, torch.float64), to(biases, torch.float64))
    torch.testing.assert_close(out.cpu(), reference.residual_trunk(x, weights, biases), atol=TOLERANCE["float64"], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_empty_batch_and_strided_views_of_nan_buffers(impl, dtype):
    if impl == "fused" and dtype == torch.float32:
        pytest.skip("forced fused rejects float32 (tested above)")
    weights, biases = make_trunk(67, 64, blocks=2)
    wl, bl = to(weights, dtype), to(biases, dtype)
    empty = torch.empty(0, 67, 9, 11, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    out = vsr_fast.residual_trunk(empty, wl, bl)
    assert out.shape == (0, 64, 9, 11)
    assert_layout_like_fake(out, empty)
    # a view into a NaN-filled buffer: only the view's elements may be read
    big = torch.full((2, 70, 20, 33), float("nan"), device="cuda", dtype=dtype)
    x = big[:, 1:68, 2:19, 3:32]
    x.copy_(image((2, 67, 17, 29)).to(dtype))
    out = vsr_fast.residual_trunk(x, wl, bl)
    torch.testing.assert_close(out, vsr_fast.residual_trunk(x.contiguous(), wl, bl), atol=0, rtol=0)
    assert torch.isfinite(out).all()


def test_cuda_every_output_element_is_written(impl):
    """Fill the caching allocator's free blocks with NaN first: an output element the kernels never
    write would come back NaN."""
    weights, biases = make_trunk(67, 64, blocks=2)
    wl, bl = to(weights, torch.float16), to(biases, torch.float16)
    for shape in [(1, 67, 9, 17), (3, 67, 23, 41)]:
        # large blocks (> 1 MB) and small-pool blocks alike
        poison = [torch.full((64 << 20,), float("nan"), device="cuda", dtype=torch.float16)]
        poison += [torch.full((1 << 18,), float("nan"), device="cuda", dtype=torch.float16) for _ in range(32)]
        del poison
        out = vsr_fast.residual_trunk(image(shape).to("cuda", torch.float16), wl, bl)
        assert torch.isfinite(out).all(), shape


@pytest.mark.parametrize("dtype", [torch.float32] + LOWP, ids=str)
@pytest.mark.parametrize("with_feature", [False, True], ids=["basicvsr", "iconvsr"])
@pytest.mark.parametrize("state_kind", ["none", "unwarped", "warped"])
def test_cuda_propagation_step_matches_the_reference_step(impl, dtype, with_feature, state_kind):
    if impl == "fused" and dtype == torch.float32:
        pytest.skip("forced fused rejects float32 (tested above)")
    n, h, w, c = 2, 13, 21, 64
    g = torch.Generator().manual_seed(3)
    lr = torch.rand(n, 3, h, w, generator=g, dtype=torch.float64)
    feature = torch.rand(n, c, h, w, generator=g, dtype=torch.float64) if with_feature else None
    state = torch.rand(n, c, h, w, generator=g, dtype=torch.float64) if state_kind != "none" else None
    flow = torch.randn(n, h, w, 2, generator=g, dtype=torch.float64) * 2 if state_kind == "warped" else None
    weights, biases = make_trunk(3 + c + (c if with_feature else 0), c, blocks=2)
    expected = reference.propagation_step(lr, feature, state, flow, weights, biases)

    flow_dtype = torch.float32 if dtype in LOWP else dtype
    dev = lambda t, dt=dtype: None if t is None else t.to("cuda", dt)  # noqa: E731
    args = (dev(lr), dev(feature), dev(state), dev(flow, flow_dtype), to(weights, dtype), to(biases, dtype))
    out = vsr_fast.propagation_step(*args)
    assert_layout_like_fake(out, args[0])
    if dtype == torch.float32:
        torch.testing.assert_close(out.double().cpu(), expected, atol=TOLERANCE["float32_chain"], rtol=0)
    else:
        reference_lowp = reference.propagation_step(*args)
        assert_lowp_close(out.cpu(), reference_lowp.cpu(), expected)


def test_cuda_warped_state_is_flow_warp_bit_for_bit(monkeypatch):
    """The warp written into the trunk input is vsr_fast.flow_warp's maths exactly: with an input
    conv that copies the state channels (centre tap 1) and no blocks, the step returns
    leaky_relu(flow_warp(state)) = flow_warp(state) for a positive state (float64: exact convs)."""
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "library")
    n, h, w, c = 2, 11, 19, 8
    g = torch.Generator().manual_seed(4)
    lr = torch.rand(n, 3, h, w, generator=g, dtype=torch.float64).cuda()
    state = (torch.rand(n, c, h, w, generator=g, dtype=torch.float64) + 0.5).cuda()
    flow = (torch.randn(n, h, w, 2, generator=g, dtype=torch.float64) * 3).cuda()
    w0 = torch.zeros(c, 3 + c, 3, 3, dtype=torch.float64, device="cuda")
    w0[torch.arange(c), 3 + torch.arange(c), 1, 1] = 1
    b0 = torch.zeros(c, dtype=torch.float64, device="cuda")
    out = vsr_fast.propagation_step(lr, None, state, flow, [w0], [b0])
    warped = vsr_fast.flow_warp(state, flow)
    assert torch.equal(out, torch.nn.functional.leaky_relu(warped, 0.1))


def test_cuda_fused_block_matches_the_library_path_on_720p_quarter(monkeypatch):
    """The fused kernel alone (one block) on [1, 64, 180, 320] fp16: within 2x the eager reference's
    error against float64, and close to the library path."""
    if not fused_capable():
        pytest.skip("the fused residual-block kernel needs compute capability >= 8.0")
    weights, biases = make_trunk(64, 64, blocks=1, seed=5)
    x64 = image((1, 64, 180, 320), seed=6).cuda()
    expected = reference.residual_trunk(x64, to(weights, torch.float64), to(biases, torch.float64))
    xl, wl, bl = x64.half(), to(weights, torch.float16), to(biases, torch.float16)
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "fused")
    fused = vsr_fast.residual_trunk(xl, wl, bl)
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "library")
    library = vsr_fast.residual_trunk(xl, wl, bl)
    assert_lowp_close(fused, reference.residual_trunk(xl, wl, bl), expected)
    assert_lowp_close(library, reference.residual_trunk(xl, wl, bl), expected)
    scale = expected.abs().max().item()
    assert (fused.double() - library.double()).abs().max().item() <= 8 * 2 ** -10 * scale


def _selfcheck_warnings(record):
    return [str(w.message) for w in record if "self-check" in str(w.message)]


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_cuda_fused_kernel_passes_its_self_check_on_this_gpu(monkeypatch, dtype):
    if not fused_capable():
        pytest.skip("the fused residual-block kernel needs compute capability >= 8.0")
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "auto")
    monkeypatch.setenv("VSR_FAST_TRUNK_SELFCHECK_INJECT", "fresh-pass")  # a cache entry of its own
    weights, biases = make_trunk(64, 64, blocks=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        vsr_fast.residual_trunk(image((1, 64, 9, 17)).to("cuda", dtype), to(weights, dtype), to(biases, dtype))
    assert not _selfcheck_warnings(record), _selfcheck_warnings(record)


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_cuda_self_check_failure_falls_back_to_the_library_path_with_a_warning(monkeypatch, dtype):
    if not fused_capable():
        pytest.skip("the fused residual-block kernel needs compute capability >= 8.0")
    weights, biases = make_trunk(64, 64, blocks=2)
    x, wl, bl = image((1, 64, 19, 23)).to("cuda", dtype), to(weights, dtype), to(biases, dtype)
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "library")
    library = vsr_fast.residual_trunk(x, wl, bl)
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "auto")
    monkeypatch.setenv("VSR_FAST_TRUNK_SELFCHECK_INJECT", "fail-fallback-test")  # corrupts the probe
    with pytest.warns(UserWarning, match=r"FAILED its self-check.*max abs error"):
        out = vsr_fast.residual_trunk(x, wl, bl)
    torch.testing.assert_close(out, library, atol=0, rtol=0)
    # the verdict is cached: no second probe, no second warning, still the library path
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        again = vsr_fast.residual_trunk(x, wl, bl)
    assert not _selfcheck_warnings(record)
    torch.testing.assert_close(again, library, atol=0, rtol=0)


def _step_inputs(dtype, seed):
    n, h, w, c = 1, 19, 23, 64
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(n, 3, h, w, generator=g).to("cuda", dtype)
    state = torch.rand(n, c, h, w, generator=g).to("cuda", dtype)
    flow = (torch.randn(n, h, w, 2, generator=g) * 2).cuda()
    flow = flow if dtype in LOWP else flow.to(dtype)
    return lr, state, flow


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_graph_replay_of_propagation_step_equals_eager(impl, dtype):
    if impl == "fused" and dtype == torch.float32:
        pytest.skip("forced fused rejects float32 (tested above)")
    weights, biases = make_trunk(3 + 64, 64, blocks=2)
    wl, bl = to(weights, dtype), to(biases, dtype)
    lr, state, flow = _step_inputs(dtype, seed=7)
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
    new_lr, new_state, new_flow = _step_inputs(dtype, seed=8)
    lr.copy_(new_lr)
    state.copy_(new_state)
    flow.copy_(new_flow)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, step(), atol=0, rtol=0)


def test_cuda_graph_capture_before_the_self_check_uses_the_library_path(monkeypatch):
    if not fused_capable():
        pytest.skip("the fused residual-block kernel needs compute capability >= 8.0")
    dtype = torch.float16
    weights, biases = make_trunk(3 + 64, 64, blocks=2)
    wl, bl = to(weights, dtype), to(biases, dtype)
    lr, state, flow = _step_inputs(dtype, seed=9)
    step = lambda: vsr_fast.propagation_step(lr, None, state, flow, wl, bl)  # noqa: E731
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "library")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warms up cuDNN for these shapes, not the self-check
        library = step()
    torch.cuda.current_stream().wait_stream(side)
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "auto")
    monkeypatch.setenv("VSR_FAST_TRUNK_SELFCHECK_INJECT", "fresh-capture")  # not checked yet
    graph = torch.cuda.CUDAGraph()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with torch.cuda.graph(graph):
            static_out = step()
    assert any("during CUDA graph capture" in m for m in _selfcheck_warnings(record)), \
        [str(w.message) for w in record]
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, library, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_opcheck(impl, dtype):
    if impl == "fused" and dtype == torch.float32:
        pytest.skip("forced fused rejects float32 (tested above)")
    weights, biases = make_trunk(67, 64, blocks=1)
    grad = dtype == torch.float32
    wl = [w.requires_grad_(grad) for w in to(weights, dtype)]
    bl = [b.requires_grad_(grad) for b in to(biases, dtype)]
    x = image((2, 67, 9, 11)).to("cuda", dtype).requires_grad_(grad)
    for xx in (x, x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(grad)):
        torch.library.opcheck(torch.ops.vsr_fast.residual_trunk.default, (xx, wl, bl))
    lr, state, flow = _step_inputs(dtype, seed=10)
    ws, bs = make_trunk(3 + 64, 64, blocks=1)
    ws = [w.requires_grad_(grad) for w in to(ws, dtype)]
    bs = [b.requires_grad_(grad) for b in to(bs, dtype)]
    for args in [(lr, None, None, None), (lr, None, state, None), (lr, None, state, flow)]:
        args = tuple(None if t is None else t.detach().requires_grad_(grad and t.is_floating_point())
                     for t in args)
        torch.library.opcheck(torch.ops.vsr_fast.propagation_step.default, (*args, ws, bs))


def test_cuda_gradients_by_recomputation_match_the_reference(monkeypatch):
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "auto")
    weights, biases = make_trunk(5, 8, blocks=1)
    x = image((2, 5, 6, 7))
    xs = [x.cuda().float().requires_grad_(), x.clone().requires_grad_()]
    ws = [to(weights, torch.float32), [w.clone() for w in weights]]
    for w in ws[0] + ws[1]:
        w.requires_grad_()
    vsr_fast.residual_trunk(xs[0], ws[0], [b.cuda().float() for b in biases]).square().sum().backward()
    reference.residual_trunk(xs[1], ws[1], biases).square().sum().backward()
    torch.testing.assert_close(xs[0].grad.double().cpu(), xs[1].grad, atol=1e-4, rtol=1e-4)
    for a, b in zip(ws[0], ws[1]):
        torch.testing.assert_close(a.grad.double().cpu(), b.grad, atol=1e-4, rtol=1e-4)


def test_cuda_forced_fused_and_bad_settings_raise_clear_errors(monkeypatch):
    weights, biases = make_trunk(3, 32, blocks=1)
    x = image((1, 3, 8, 8)).to("cuda", torch.float16)
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "fused")
    with pytest.raises(RuntimeError, match=r"vsr_fast::residual_trunk: VSR_FAST_TRUNK_IMPL=fused.*64 channels"):
        vsr_fast.residual_trunk(x, to(weights, torch.float16), to(biases, torch.float16))
    monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", "fastest")
    with pytest.raises(RuntimeError, match="VSR_FAST_TRUNK_IMPL must be auto, library or fused, got 'fastest'"):
        vsr_fast.residual_trunk(x, to(weights, torch.float16), to(biases, torch.float16))
