"""spynet_basic_module (one SPyNet pyramid level: five 7x7 convolutions 8-32-64-32-16-2, ReLU between
them): vsr_fast's op vs the reference module (vsr_fast.reference.SPyNetBasicModule, the official layers,
eager, NCHW), the same module on channels_last input, and the module under torch.compile; then the whole
SPyNet: the fast one (every level one op call) vs main's fast SPyNet before the op (reference levels,
vsr_fast.flow_warp warps), the reference SPyNet and the reference SPyNet under torch.compile. fp32, CPU
and (where present) CUDA. On the shared 2-core machine, run it with OMP_NUM_THREADS=1 as well: with two
threads every oneDNN call waits for a descheduled peer (benchmarks/results/).

The sizes are the ones SPyNet really runs for a 64x112 clip: it resizes 64x112 frames to 64x128 (the
next multiple of 32) and runs six levels at 2x4, 4x8, 8x16, 16x32, 32x64 and 64x128. The fast models
put both directions' pairs in one batch: 5 frames give 2 * 4 = 8 pairs (the profiled case below), 10
frames 18.

Prediction, written before measuring, for the first design (the op's convolutions in NHWC through
onednn_conv.h with prepacked weights and fused bias + ReLU; 2-core AMD EPYC, AVX2, fp32, 2 threads,
quiet): a level costs
239,904 multiply-adds per pixel (49 * (8*32 + 32*64 + 64*32 + 32*16 + 16*2)); 8 pairs over all six
levels are 42 GFLOP, 31 of them at 64x128. A profile of the fast BasicVSR on the idle machine put
SPyNet at 0.40 s of a 3.55 s call for those 5 frames: ~105 GFLOP/s, already near what oneDNN's AVX2
kernels reach here, and the op runs the same kernels. What it saves is what surrounds them: four ReLU
passes, the NCHW <-> blocked reorders of every activation (NCHW reference), and the weight reorder of
every call (~0.1 ms per weight; the trunk's cache keeps them). So, per level, op vs reference module:
  - 64x128 and 32x64 (compute-bound): 1.05-1.15x the NCHW module, 1.0-1.05x channels_last, ~1.0x
    torch.compile (the same oneDNN convolutions as externs, ReLU fused into nothing);
  - 2x4 to 8x16 (per-call overhead: weight reorders, primitive setup): 1.5-3x the eager module;
  - whole SPyNet, 8 pairs: 0.40 s -> ~0.34-0.36 s, 1.1-1.2x main's fast SPyNet, which moves the whole
    model by ~1.5% (3.55 s -> ~3.50 s): below this machine's run-to-run noise.
Measured: that design was no faster than the NCHW module (oneDNN's NHWC kernels for these 7x7
convolutions are ~20% slower on this CPU than the blocked nChw8c kernels it picks for NCHW input), so the
op now keeps the activations in oneDNN's own layout (csrc/cpu/spynet_basic_module.cpp). Second
prediction, for that design, from one-thread CPU-time runs of the chain alone (64x128: 394 ms against
425 for the NCHW module and 506 for channels_last): 64x128 and 32x64 1.05-1.15x the NCHW module,
1.2-1.3x channels_last, ~1.0-1.1x torch.compile (same kernels plus reorders); small levels as above;
whole SPyNet 1.05-1.15x main's. Results: benchmarks/results/spynet_basic_module_cpu_2core.md.
"""

import time

import pytest
import torch

import vsr_fast
from vsr_fast import reference

FRAME = (64, 112)  # the clip's LR frames; SPyNet resizes them to 64x128
LEVELS = {f"{64 >> k}x{128 >> k}": (64 >> k, 128 >> k) for k in range(5, -1, -1)}
PAIRS = {"pairs8": 8, "pairs18": 18}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
_compiled = {}


class MainFastSPyNet(reference.SPyNet):
    """main's fast SPyNet before the op: reference levels (nn.Sequential of conv + ReLU, NCHW) with
    vsr_fast.flow_warp's border warps."""

    warp = staticmethod(vsr_fast.SPyNet.warp)


def level_implementation(name, module):
    if name == "vsr_fast":
        weights, biases = module.conv_parameters()
        return lambda x: vsr_fast.spynet_basic_module(x, weights, biases)
    if name == "reference":
        return module
    if name == "reference_channels_last":
        return lambda x: module(x.contiguous(memory_format=torch.channels_last))
    key = (name, id(module))
    if key not in _compiled:
        _compiled[key] = torch.compile(module, dynamic=False)
    return _compiled[key]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pairs", ["pairs8"])
@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("impl", ["vsr_fast", "reference", "reference_channels_last", "reference_compiled"])
def test_spynet_level(run_case, device, pairs, level, impl):
    torch.manual_seed(0)
    module = reference.SPyNetBasicModule().to(device).eval()
    h, w = LEVELS[level]
    n = PAIRS[pairs]
    x = torch.rand(n, 8, h, w, generator=torch.Generator().manual_seed(1)).to(device)
    fn = level_implementation(impl, module)

    def case():
        with torch.no_grad():
            fn(x)

    run_case(
        f"spynet_basic_module fp32 [{n}, 8, {h}, {w}] {device}",
        impl,
        case,
        torch.device(device),
        rounds=10 if device == "cpu" else None,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pairs", list(PAIRS))
@pytest.mark.parametrize("impl", ["vsr_fast", "main_fast", "reference", "reference_compiled"])
def test_spynet(run_case, device, pairs, impl):
    torch.manual_seed(0)
    ref = reference.SPyNet().eval()
    cls = {"vsr_fast": vsr_fast.SPyNet, "main_fast": MainFastSPyNet}.get(impl, reference.SPyNet)
    net = cls().eval()
    net.load_state_dict(ref.state_dict())
    net.to(device)
    if impl == "reference_compiled":
        if (impl, pairs) not in _compiled:
            _compiled[(impl, pairs)] = torch.compile(net, dynamic=False)
        net = _compiled[(impl, pairs)]
    n = PAIRS[pairs]
    g = torch.Generator().manual_seed(1)
    a, b = (torch.rand(n, 3, *FRAME, generator=g).to(device) for _ in range(2))

    def case():
        with torch.no_grad():
            net(a, b)

    run_case(
        f"SPyNet fp32 {n} pairs of {FRAME[0]}x{FRAME[1]} {device}",
        impl,
        case,
        torch.device(device),
        rounds=5 if device == "cpu" else None,
    )


def _interleaved(fns, rounds):
    """Median seconds per implementation over `rounds` rounds that run every implementation once, in
    turn: on a shared machine whose speed drifts, only such ratios mean something."""
    times = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()  # warm-up (compilation, first touches of memory)
        for _ in range(rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


@pytest.mark.parametrize("level", list(LEVELS))
def test_spynet_level_interleaved(record_value, level):
    """The op against the reference module, NCHW and channels_last, interleaved: ratios (the module's
    median time / the op's)."""
    torch.manual_seed(0)
    module = reference.SPyNetBasicModule().eval()
    weights, biases = module.conv_parameters()
    h, w = LEVELS[level]
    x = torch.rand(PAIRS["pairs8"], 8, h, w, generator=torch.Generator().manual_seed(1))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    median = _interleaved(
        {
            "vsr_fast": lambda: vsr_fast.spynet_basic_module(x, weights, biases),
            "reference": lambda: module(x),
            "reference_channels_last": lambda: module(x_cl),
        },
        rounds=max(7, min(100, int(2e7 / (h * w)))),
    )
    group = f"spynet_basic_module fp32 [8, 8, {h}, {w}] cpu, interleaved ratio to vsr_fast"
    for name in ("reference", "reference_channels_last"):
        record_value(group, name, round(median[name] / median["vsr_fast"], 3))


def test_spynet_interleaved(record_value):
    """The whole SPyNet, 8 pairs of 64x112, interleaved: ratios of main's fast SPyNet and the reference
    SPyNet to the fast one."""
    torch.manual_seed(0)
    nets = {"vsr_fast": vsr_fast.SPyNet(), "main_fast": MainFastSPyNet(), "reference": reference.SPyNet()}
    for net in nets.values():
        net.load_state_dict(nets["vsr_fast"].state_dict())
        net.eval()
    g = torch.Generator().manual_seed(1)
    a, b = (torch.rand(PAIRS["pairs8"], 3, *FRAME, generator=g) for _ in range(2))
    median = _interleaved({name: (lambda net=net: net(a, b)) for name, net in nets.items()}, rounds=9)
    group = f"SPyNet fp32 8 pairs of {FRAME[0]}x{FRAME[1]} cpu, interleaved ratio to vsr_fast"
    for name in ("main_fast", "reference"):
        record_value(group, name, round(median[name] / median["vsr_fast"], 3))
    record_value(group, "vsr_fast_median_ms", round(median["vsr_fast"] * 1e3, 1))
