"""vsr_fast::reconstruction_tail against its spec (vsr_fast.reference.reconstruction_tail, float64),
and the spec against the reference models' fuse / reconstruct."""

import pytest
import torch

import vsr_fast
from vsr_fast import reference

from _helpers import (
    assert_close,
    assert_close_scaled,
    assert_gradcheck,
    assert_layout_like_fake,
    assert_lowp_close,
    assert_onednn_bf16_refused,
    force_onednn_bf16,
    image,
    poisoned_allocations,
    strided_view_of_nan_buffer,
    to,
)


def make_args(c=8, mid=(8, 8), hr=8, n=2, h=5, w=7, fusion=True, forward=True, seed=0):
    """float64 CPU arguments in the op's order: lr, feat, feat_forward, fusion_weight, fusion_bias,
    weights, biases; weights at a variance-preserving scale so the chain stays of magnitude ~1."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, fan_in=None):
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        return t * fan_in**-0.5 if fan_in else t

    lr = image((n, 3, h, w), seed=seed + 1)
    feat = randn(n, c, h, w)
    feat_forward = randn(n, c, h, w) if forward else None
    fusion_weight = fusion_bias = None
    tail_in = c
    if fusion:
        fused_in = 2 * c if forward else c
        fusion_weight, fusion_bias = randn(c, fused_in, 1, 1, fan_in=fused_in), randn(c) * 0.1
    shapes = [(4 * mid[0], tail_in), (4 * mid[1], mid[0]), (hr, mid[1]), (3, hr)]
    weights = [randn(o, i, 3, 3, fan_in=9 * i) for o, i in shapes]
    biases = [randn(o) * 0.1 for o, _ in shapes]
    return lr, feat, feat_forward, fusion_weight, fusion_bias, weights, biases


def cast(args, device, dtype):
    lr, feat, forward, fw, fb, weights, biases = args
    one = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return (
        one(lr),
        one(feat),
        one(forward),
        one(fw),
        one(fb),
        to(weights, device, dtype),
        to(biases, device, dtype),
    )


def run(args):
    return torch.ops.vsr_fast.reconstruction_tail(*args)


def test_spec_is_the_reference_models_tail():
    """The oracle itself: BasicVSR's fuse + reconstruct, IconVSR's reconstruct, exactly."""
    torch.manual_seed(0)
    basic = reference.BasicVSR(mid_channels=8, num_blocks=1).double()
    icon = reference.IconVSR(mid_channels=8, num_blocks=1).double()
    lr, feat, forward = (
        image((2, 3, 6, 5)),
        torch.randn(2, 8, 6, 5).double(),
        torch.randn(2, 8, 6, 5).double(),
    )
    with torch.no_grad():
        fw, fb = basic.fusion.weight, basic.fusion.bias
        expected = basic.fuse_and_reconstruct(feat, forward, lr)
        assert torch.equal(expected, basic.reconstruct(basic.fuse(feat, forward), lr))
        assert torch.equal(
            reference.reconstruction_tail(lr, feat, forward, fw, fb, *basic.tail_parameters()), expected
        )
        assert torch.equal(
            reference.reconstruction_tail(lr, feat, None, None, None, *icon.tail_parameters()),
            icon.reconstruct(feat, lr),
        )


@pytest.mark.parametrize(
    "case",
    [
        dict(),  # BasicVSR: fusion of two features
        dict(fusion=False, forward=False),  # IconVSR: no fusion
        dict(forward=False),  # a fusion conv over one feature
        dict(mid=(4, 12), hr=5, c=6),  # the channel counts are the weights' (64 / 64 / 64 in the models)
        dict(n=1, h=1, w=1),
        dict(n=3, h=9, w=4),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("conv", ["default", "onednn"])  # CPU float32: Winograd where AVX2 + FMA, or oneDNN
def test_matches_the_spec(device, monkeypatch, case, channels_last, conv):
    if conv == "onednn":
        if device.type != "cpu":
            pytest.skip("VSR_FAST_CPU_CONV is the CPU kernels' setting")
        monkeypatch.setenv("VSR_FAST_CPU_CONV", "onednn")
    else:
        monkeypatch.delenv("VSR_FAST_CPU_CONV", raising=False)
    args = make_args(**case)
    expected = reference.reconstruction_tail(*args)
    lr, feat, forward, fw, fb, weights, biases = cast(args, device, torch.float32)
    if channels_last:
        lr, feat = (t.contiguous(memory_format=torch.channels_last) for t in (lr, feat))
    out = run((lr, feat, forward, fw, fb, weights, biases))
    assert_close(out.cpu(), expected, "float32_chain")
    assert_layout_like_fake(out, lr)


def test_strided_views_of_nan_filled_buffers(device):
    """Inputs and weights that are views into larger NaN-filled buffers: only the viewed elements may
    be read."""
    args = make_args()
    expected = reference.reconstruction_tail(*args)

    def strided(t):
        return strided_view_of_nan_buffer(t, device)

    lr, feat, forward, fw, fb, weights, biases = args
    out = run(
        (
            strided(lr),
            strided(feat),
            strided(forward),
            strided(fw),
            strided(fb),
            [strided(w) for w in weights],
            [strided(b) for b in biases],
        )
    )
    assert_close(out.cpu(), expected, "float32_chain")


@pytest.mark.parametrize("channels_last", [False, True])
def test_every_output_element_is_written(device, channels_last):
    """Every buffer the op allocates starts out NaN: an output element no stage writes stays NaN."""
    lr, *rest = cast(make_args(h=6, w=9), device, torch.float32)
    if channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)
    with poisoned_allocations():
        out = run((lr, *rest))
    assert torch.isfinite(out).all()


def test_float64_and_gradcheck(device):
    args = cast(make_args(c=2, mid=(2, 1), hr=2, n=1, h=3, w=2), device, torch.float64)
    assert_close(
        run(args).cpu(),
        reference.reconstruction_tail(*make_args(c=2, mid=(2, 1), hr=2, n=1, h=3, w=2)),
        "float64",
    )
    lr, feat, forward, fw, fb, weights, biases = args
    for t in (lr, feat, forward, fw, fb, *weights, *biases):
        t.requires_grad_()
    assert_gradcheck(
        lambda lr, feat, forward, fw, fb, *wb: vsr_fast.reconstruction_tail(
            lr, feat, wb[:4], wb[4:], forward, fw, fb
        ),
        (lr, feat, forward, fw, fb, *weights, *biases),
    )


def test_float32_gradients_match_the_spec(device):
    args64 = make_args(n=1)
    args = cast(args64, device, torch.float32)
    lr, feat, forward, fw, fb, weights, biases = (
        [t.requires_grad_() for t in a] if isinstance(a, list) else a.requires_grad_() for a in args64
    )
    reference.reconstruction_tail(lr, feat, forward, fw, fb, weights, biases).square().sum().backward()
    for a in args:
        for t in a if isinstance(a, list) else [a]:
            t.requires_grad_()
    run(args).square().sum().backward()
    leaves64 = [lr, feat, forward, fw, fb, *weights, *biases]
    leaves = [*args[:5], *args[5], *args[6]]
    for fast, ref in zip(leaves, leaves64):
        assert_close_scaled(fast.grad.cpu(), ref.grad, "float32_chain")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_by_the_2x_rule(device, dtype):
    args = make_args()
    expected = reference.reconstruction_tail(*args)
    lowp = cast(args, device, dtype)
    assert_lowp_close(run(lowp), reference.reconstruction_tail(*lowp), expected)


@pytest.mark.parametrize("fusion", [False, True], ids=["iconvsr", "basicvsr"])
def test_bfloat16_onednn_path_when_forced(monkeypatch, fusion):
    """bf16 through the oneDNN tail (taken by itself on CPUs with bf16 hardware), forced here."""
    args = make_args(fusion=fusion, forward=fusion)
    expected = reference.reconstruction_tail(*args)
    lowp = cast(args, "cpu", torch.bfloat16)
    if not force_onednn_bf16(monkeypatch):
        assert_onednn_bf16_refused(lambda: run(lowp))
        return
    out = run(lowp)
    assert out.dtype == torch.bfloat16
    assert_lowp_close(out, reference.reconstruction_tail(*lowp), expected)


def test_weight_updates_are_seen(device):
    """The CPU path packs weights once and caches them; an in-place update must reach the next call."""
    args = cast(make_args(), device, torch.float32)
    run(args)
    with torch.no_grad():
        for w in args[5]:
            w.mul_(0.5)
    expected = reference.reconstruction_tail(
        *(
            to([t], "cpu", torch.float64)[0] if not isinstance(t, list) else to(t, "cpu", torch.float64)
            for t in args
        )
    )
    assert_close(run(args).cpu(), expected, "float32_chain")


def test_empty_batch_and_frames(device):
    lr, feat, forward, fw, fb, weights, biases = cast(make_args(n=0), device, torch.float32)
    assert run((lr, feat, forward, fw, fb, weights, biases)).shape == (0, 3, 20, 28)
    lr, feat, forward = (t[..., :0] for t in (lr, feat, forward))
    assert run((lr, feat, forward, fw, fb, weights, biases)).shape == (0, 3, 20, 0)


def test_opcheck(device):
    lr, feat, forward, fw, fb, weights, biases = cast(make_args(n=1, h=3, w=4), device, torch.float32)
    for t in (feat, fw, *weights):
        t.requires_grad_()
    torch.library.opcheck(
        torch.ops.vsr_fast.reconstruction_tail.default, (lr, feat, forward, fw, fb, weights, biases)
    )
    torch.library.opcheck(
        torch.ops.vsr_fast.reconstruction_tail.default, (lr, feat, None, None, None, weights, biases)
    )


def _bad(index, change):
    def apply(args):
        args = list(args)
        args[index] = change(args[index])
        return args

    return apply


@pytest.mark.parametrize(
    "bad, message",
    [
        (_bad(0, lambda lr: lr[:, :2]), r"expected lr \[N, 3, H, W\], got \[2, 2, 5, 7\]"),
        (
            _bad(1, lambda f: f[..., :6]),
            r"expected feat \[N, C, H, W\] of lr's N, H, W, got lr \[2, 3, 5, 7\]",
        ),
        (_bad(2, lambda f: f[:1]), r"expected feat_forward \[N, C_f, H, W\] of feat's N, H, W"),
        (_bad(3, lambda w: None), r"feat_forward needs fusion_weight"),
        (_bad(4, lambda b: None), r"fusion_weight and fusion_bias come together"),
        (_bad(3, lambda w: w[:, :15]), r"fusion_weight must be \[C_out, 16, 1, 1\], got \[8, 15, 1, 1\]"),
        (_bad(4, lambda b: b[:7]), r"fusion_bias must be \[8\], got \[7\]"),
        (_bad(5, lambda ws: ws[:3]), r"expected 4 weights and 4 biases .* got 3 and 4"),
        (_bad(5, lambda ws: [ws[0][:30], *ws[1:]]), r"weights\[0\] feeds pixel_shuffle\(2\).* got 30"),
        (
            _bad(5, lambda ws: [*ws[:3], ws[3][:, :7]]),
            r"weights\[3\] must be \[C_out, 8, 3, 3\], got \[3, 7, 3, 3\]",
        ),
        (_bad(5, lambda ws: [*ws[:3], ws[3][:2]]), r"weights\[3\] \(conv_last\) must have 3 output channels"),
        (_bad(6, lambda bs: [*bs[:2], bs[2][:5], bs[3]]), r"biases\[2\] must be \[8\], got \[5\]"),
        (_bad(1, lambda f: f.double()), r"feat must have lr's dtype and device \(Float on .*\), got Double"),
        (_bad(5, lambda ws: [ws[0].double(), *ws[1:]]), r"weights\[0\] must have lr's dtype and device"),
    ],
)
def test_bad_inputs_raise_clear_errors(device, bad, message):
    args = bad(cast(make_args(), device, torch.float32))
    with pytest.raises(RuntimeError, match="vsr_fast::reconstruction_tail") as info:
        run(args)
    info.match(message)
    # the fake (Meta) kernel refuses the same inputs in the same words
    meta = [
        [t.to("meta") for t in a] if isinstance(a, list) else (None if a is None else a.to("meta"))
        for a in args
    ]
    with pytest.raises(RuntimeError) as fake_info:
        run(meta)
    assert str(fake_info.value) == str(info.value).replace(str(torch.device(device)), "meta")


def test_compiles(device):
    args = cast(make_args(), device, torch.float32)
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(args), run(args))
