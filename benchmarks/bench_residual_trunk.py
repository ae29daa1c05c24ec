"""residual_trunk (BasicVSR's 30-block propagation trunk): vsr_fast vs the reference trunk
(vsr_fast.reference.residual_trunk, what the official code runs), eager and under torch.compile.

CPU: fp32, 67 -> 64 channels, on a 64x112 crop, 720p/4 and a batch of four 64x64 crops.

CUDA: vsr_fast's auto, library and fused paths, fp32 / fp16 / bf16, contiguous NCHW inputs as the
models feed them, on the same kinds of shapes. Plus [1, 64, 180, 320] fp16 (64 -> 64 input conv, 30
blocks: 60 of the 61 convs are residual-block convs) to compare the fused residual-block kernel with
the library path in TFLOP/s. fp32 runs with PyTorch's default cuDNN TF32 setting (allowed) on every
implementation alike. TFLOP/s (2 * 9 * C_in * C_out * H * W * N per conv, summed over the trunk) go
to the benchmark's extra_info and to $VSR_FAST_TRUNK_TFLOPS (default .benchmarks/trunk_cuda_tflops.txt).
The CUDA torch.compile baseline is compiled once per dtype with dynamic shapes (static shapes would
mean ten compilations, which would dominate the GPU check's time budget); VSR_FAST_BENCH_COMPILE=0
skips it.

Ratios of the same run are printed at the end (benchmarks/conftest.py).
"""

import os
from pathlib import Path

import pytest
import torch

import vsr_fast
from vsr_fast import reference

from env_per_call import with_env  # benchmarks/ is on sys.path

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

SHAPES = {"train64x112": (1, 67, 64, 112), "lr720p": (1, 67, 180, 320), "batch4": (4, 67, 64, 64)}
_compiled = {}


def compiled(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def setup_case(shape):
    torch.manual_seed(0)
    n, c_in, h, w = shape
    trunk = reference.ResidualBlocksWithInputConv(c_in, 64, num_blocks=30).eval()
    weights, biases = trunk.trunk_parameters()
    return trunk, weights, biases, torch.rand(n, c_in, h, w)


@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
@pytest.mark.parametrize("impl", ["vsr_fast", "reference", "reference_compiled"])
def test_trunk(run_case, shape, impl):
    _, weights, biases, x = setup_case(SHAPES[shape])
    fn = {
        "vsr_fast": vsr_fast.residual_trunk,
        "reference": reference.residual_trunk,
        "reference_compiled": compiled(reference.residual_trunk),
    }[impl]

    def case():
        with torch.no_grad():
            fn(x, weights, biases)

    run_case(f"trunk30 fp32 {shape} {list(SHAPES[shape])} cpu", impl, case, torch.device("cpu"), rounds=5)


@pytest.mark.parametrize("cache", ["cached", "reorder_per_call"])
def test_trunk_weight_cache(run_case, monkeypatch, cache):
    """What the CPU weight cache (csrc/cpu/onednn_conv.h) saves per propagation step: the same trunk
    call with the cache (a memcmp of each weight against the copy it was packed from) and with
    VSR_FAST_CPU_WEIGHT_CACHE=0 (61 oneDNN weight reorders per call). Prediction: ~72 us per reorder
    of a 64 x 64 x 3 x 3 weight, so ~4.4 ms of the ~87 ms step; the memcmps well under 1 ms."""
    if cache == "reorder_per_call":
        monkeypatch.setenv("VSR_FAST_CPU_WEIGHT_CACHE", "0")
    _, weights, biases, x = setup_case(SHAPES["train64x112"])

    def case():
        with torch.no_grad():
            vsr_fast.residual_trunk(x, weights, biases)

    run_case("trunk30 fp32 weight cache [1, 67, 64, 112] cpu", cache, case, torch.device("cpu"), rounds=10)


def test_trunk_cpu_convolutions(run_interleaved):
    """The float32 CPU trunk with its convolutions by Winograd F(4x4, 3x3) (the default where the CPU
    has AVX2 + FMA, csrc/cpu/winograd_conv.h) and by oneDNN (VSR_FAST_CPU_CONV=onednn), against the
    reference trunk, interleaved. Prediction (from one convolution's CPU time on one thread: 2.2x
    oneDNN's): Winograd ~2x the oneDNN path on the [1, 67, 64, 112] trunk, oneDNN ~1.1x the reference."""
    if not vsr_fast.hardware.cpu_supports_avx2_fma():
        pytest.skip("no AVX2 + FMA: the default CPU path is oneDNN's, nothing to compare")
    _, weights, biases, x = setup_case(SHAPES["train64x112"])
    x = x.contiguous(memory_format=torch.channels_last)

    def trunk():
        with torch.no_grad():
            vsr_fast.residual_trunk(x, weights, biases)

    def ref():
        with torch.no_grad():
            reference.residual_trunk(x, weights, biases)

    impls = {
        "reference": ref,
        "vsr_fast_onednn": with_env(trunk, "VSR_FAST_CPU_CONV", "onednn"),  # read per call
        "vsr_fast_winograd": with_env(trunk, "VSR_FAST_CPU_CONV", "auto"),
    }
    group = "trunk30 fp32 CPU convolutions [1, 67, 64, 112] channels_last"
    run_interleaved(group, impls, torch.device("cpu"), 7)


# ---- CUDA ----------------------------------------------------------------------------------------

BLOCKS = 30
CUDA_SHAPES = {"crop64x112": (1, 67, 64, 112), "lr720p": (1, 67, 180, 320), "batch4": (4, 67, 64, 64)}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IMPLS = ["vsr_fast", "vsr_fast_library", "vsr_fast_fused", "reference", "reference_compiled"]
_ENV = {"vsr_fast": "auto", "vsr_fast_library": "library", "vsr_fast_fused": "fused"}
_compiled_dynamic = {}


def trunk_inputs(shape, dtype, seed=0):
    n, c_in, h, w = shape
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(64, c_in, 3, 3, generator=g) * (9 * c_in) ** -0.5]
    weights += [torch.randn(64, 64, 3, 3, generator=g) * 0.1 * (9 * 64) ** -0.5 for _ in range(2 * BLOCKS)]
    biases = [torch.randn(64, generator=g) * 0.01 for _ in weights]
    x = torch.rand(shape, generator=g)
    dev = lambda t: t.to("cuda", dtype)  # noqa: E731
    return dev(x), [dev(w) for w in weights], [dev(b) for b in biases]


def trunk_flops(shape):
    n, c_in, h, w = shape
    return 2 * 9 * n * h * w * 64 * (c_in + 64 * 2 * BLOCKS)


def function(impl, key):
    if impl in _ENV:
        return vsr_fast.residual_trunk
    if impl == "reference":
        return reference.residual_trunk
    if os.environ.get("VSR_FAST_BENCH_COMPILE", "1") == "0":
        pytest.skip("VSR_FAST_BENCH_COMPILE=0")
    if key not in _compiled_dynamic:
        _compiled_dynamic[key] = torch.compile(reference.residual_trunk, dynamic=True)
    return _compiled_dynamic[key]


def record_tflops(benchmark, group, impl, flops):
    tflops = flops / benchmark.stats.stats.median / 1e12
    benchmark.extra_info["tflop_per_s"] = tflops
    path = Path(os.environ.get("VSR_FAST_TRUNK_TFLOPS", ".benchmarks/trunk_cuda_tflops.txt"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"{group}: {impl} {tflops:.1f} TFLOP/s ({torch.cuda.get_device_name()})\n")


def run_cuda(run_case, benchmark, monkeypatch, group, impl, shape, dtype):
    if impl == "vsr_fast_fused" and (dtype == torch.float32 or torch.cuda.get_device_capability()[0] < 8):
        pytest.skip("the fused kernel is fp16/bf16 on sm_80+ only")
    if impl in _ENV:
        monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", _ENV[impl])
    x, weights, biases = trunk_inputs(shape, dtype)
    fn = function(impl, dtype)

    def case():
        with torch.no_grad():
            fn(x, weights, biases)

    run_case(group, impl, case, torch.device("cuda"))
    record_tflops(benchmark, group, impl, trunk_flops(shape))


@needs_cuda
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", list(CUDA_SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_trunk_cuda(run_case, benchmark, monkeypatch, impl, shape, dtype):
    group = f"trunk{BLOCKS} {dtype} {shape} {list(CUDA_SHAPES[shape])} cuda"
    run_cuda(run_case, benchmark, monkeypatch, group, impl, CUDA_SHAPES[shape], DTYPES[dtype])


@needs_cuda
@pytest.mark.parametrize("impl", IMPLS)
def test_trunk_cuda_fused_blocks_720p(run_case, benchmark, monkeypatch, impl):
    shape = (1, 64, 180, 320)
    group = f"trunk{BLOCKS} blocks fp16 {list(shape)} cuda (TFLOP/s)"
    run_cuda(run_case, benchmark, monkeypatch, group, impl, shape, torch.float16)
