"""reconstruction_tail (BasicVSR's fusion + x4 tail, or IconVSR's tail): vsr_fast's op vs the
reference (vsr_fast.reference.reconstruction_tail: the official layers, NCHW, eager), the same layers
in channels_last (what the fast models ran before the op), and the reference under torch.compile.
fp32, the official widths (64 channels), CPU and (where present) CUDA.

Frames per call: "batch1" is what the models run (one frame per call); "batch4" is four frames in
one call, to measure whether batching over frames pays (compare ms per frame, i.e. batch4's / 4).

Prediction, written before measuring (2-core AMD EPYC, AVX2, fp32): 19.6 GFLOP per 64x112 frame
(upsample1 2.1, upsample2 8.5, conv_hr 8.5, conv_last 0.40, fusion 0.12); at ~150 GFLOP/s (near this
CPU's AVX2 peak on 2 threads) about 130 ms/frame plus two pixel-shuffle copies (~4 ms each), so
1.15-1.3x the channels_last layers (three LeakyReLU passes, the separate residual add and the
pixel_shuffle copies' layout conversions saved) and 1.3-1.5x the NCHW reference; batching four
frames: no gain beyond 5% (each convolution is already 7k-115k pixels). Measured: see
benchmarks/results/.
"""

import pytest
import torch

import vsr_fast
from vsr_fast import reference

SHAPES = {"train64x112": (64, 112), "lr720p": (180, 320)}
BATCHES = {"batch1": 1, "batch4": 4}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
_compiled = {}


def fast(lr, feat, forward, fw, fb, weights, biases):
    return vsr_fast.reconstruction_tail(lr, feat, weights, biases, forward, fw, fb)


def channels_last(lr, feat, forward, fw, fb, weights, biases):
    cl = [t if t is None else t.contiguous(memory_format=torch.channels_last) for t in (lr, feat, forward)]
    return reference.reconstruction_tail(*cl, fw, fb, weights, biases).contiguous()


def implementation(name):
    if name == "vsr_fast":
        return fast
    if name == "reference":
        return reference.reconstruction_tail
    if name == "reference_channels_last":
        return channels_last
    if name not in _compiled:
        _compiled[name] = torch.compile(reference.reconstruction_tail, dynamic=False)
    return _compiled[name]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", ["basicvsr", "iconvsr"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("impl", ["vsr_fast", "reference", "reference_channels_last", "reference_compiled"])
def test_reconstruction_tail(run_case, device, model, shape, batch, impl):
    if device == "cpu" and shape == "lr720p" and batch == "batch4":
        pytest.skip("four 720p frames' tail activations (~1 GiB each stage) on the 2-core machine: too slow")
    if impl == "reference_compiled" and (model == "iconvsr" or batch == "batch4"):
        pytest.skip("compiled reference: BasicVSR, one frame per call only (compile time)")
    torch.manual_seed(0)
    net = reference.BasicVSR()  # the official tail layers and fusion conv, random weights
    h, w = SHAPES[shape]
    n = BATCHES[batch]
    g = torch.Generator().manual_seed(1)
    lr, feat, forward = (torch.rand(n, c, h, w, generator=g).to(device) for c in (3, 64, 64))
    weights, biases = ([t.detach().to(device) for t in ts] for ts in net.tail_parameters())
    if model == "basicvsr":
        args = (lr, feat, forward, net.fusion.weight.detach().to(device), net.fusion.bias.detach().to(device))
    else:
        args = (lr, feat, None, None, None)
    fn = implementation(impl)

    def case():
        with torch.no_grad():
            fn(*args, weights, biases)

    run_case(
        f"reconstruction_tail {model} fp32 {shape} [{n}, 64, {h}, {w}] {device}",
        impl,
        case,
        torch.device(device),
        rounds=5 if device == "cpu" else None,
    )
