"""What the tests share, imported as ``from _helpers import ...`` (pytest puts tests/ on sys.path):
the one tolerance table and the comparisons built on it, random inputs, poisoned allocations.

Fixtures and pytest hooks (devices, the `cuda` marker, real-data locations) are in conftest.py.
"""

import contextlib

import torch
from torch._prims_common import suggest_memory_format

# The one tolerance table (docs/design.md, "Tests"). Absolute errors against a float64 reference run
# on inputs of magnitude ~1; values that are not of magnitude ~1 (gradients, flows in pixels) are
# judged relative to the largest magnitude of the reference value (assert_close_scaled).
TOLERANCE = {
    "float64": 1e-10,  # same maths, different association
    "float32": 1e-5,  # single fused kernels (flow_warp)
    "float32_chain": 1e-4,  # convolution chains (trunks, whole models)
    "lowp_factor": 2.0,  # float16/bfloat16: error <= 2x the reference's error in that dtype
    # torch.autograd.gradcheck in float64 (finite differences with eps = 1e-6): its atol, a class of
    # its own since it bounds the finite-difference error, not the op's
    "gradcheck": 1e-6,
    # The fused CUDA residual block against the library path, in units in the last place of the
    # dtype at the output's magnitude: the bound of the run-time self-check (csrc/cuda/residual_trunk.cu),
    # which the tests hold the kernel to on inputs larger than the self-check's probe.
    "fused_vs_library_ulps": 8,
}
GRADCHECK_EPS = 1e-6


def assert_close(actual, expected, tolerance, **kwargs):
    """|actual - expected| <= TOLERANCE[tolerance] everywhere (expected: the float64 reference)."""
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=TOLERANCE[tolerance], rtol=0, **kwargs
    )


def assert_close_scaled(actual, expected, tolerance, **kwargs):
    """|actual - expected| <= TOLERANCE[tolerance] * max |expected|: for values whose magnitude is not
    ~1 (gradients, summed over many pixels or divided by a mean loss's size; flows in pixels)."""
    scale = (expected.abs().max().item() if expected.numel() else 0.0) or 1.0
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=TOLERANCE[tolerance] * scale, rtol=0, **kwargs
    )


def assert_lowp_close(fast, reference_lowp, reference64, factor=TOLERANCE["lowp_factor"]):
    """float16/bfloat16 rule: the fast result's error is at most `factor` x the reference's error in
    the same dtype (both against float64), with one ulp of the output's magnitude as the floor."""
    fast, reference_lowp, reference64 = (t.cpu() for t in (fast, reference_lowp, reference64))
    fast_err = (fast.double() - reference64).abs().nan_to_num(0).max().item() if fast.numel() else 0.0
    ref_err = (
        (reference_lowp.double() - reference64).abs().nan_to_num(0).max().item() if fast.numel() else 0.0
    )
    ulp = torch.finfo(fast.dtype).eps * max(1.0, reference64.abs().max().item() if fast.numel() else 1.0)
    assert fast_err <= factor * max(ref_err, ulp), (
        f"{fast.dtype}: error {fast_err:.3g} vs reference's own {ref_err:.3g} (allowed {factor}x)"
    )


def assert_gradcheck(fn, inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=GRADCHECK_EPS, atol=TOLERANCE["gradcheck"])


@contextlib.contextmanager
def poisoned_allocations():
    """Every tensor allocated inside (torch.empty and friends, also those a kernel allocates through
    ATen for its outputs) starts out NaN-filled, on CPU and CUDA: deterministic mode with
    torch.utils.deterministic.fill_uninitialized_memory, which ATen's empty kernels honour. An output
    element a kernel forgets to write stays NaN, whatever the allocator would have handed back.
    Deterministic mode also makes ops without a deterministic kernel raise (CUDA flow_warp's grad_x)."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        # the mechanism itself, checked where it matters: a fresh allocation comes back NaN
        assert torch.empty(64).isnan().all(), "fill_uninitialized_memory did not poison torch.empty"
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = was_filling
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


# ---- inputs -------------------------------------------------------------------------------------


def image(shape, seed=1, dtype=torch.float64, low=0.0):
    """Uniform values in [low, 1), float64 on CPU unless asked otherwise."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * (1 - low) + low).to(dtype)


def make_trunk(in_channels, channels, blocks, seed=0):
    """Trunk weights and biases, float64 on CPU, at a variance-preserving scale (1 / sqrt(9 * fan-in))
    so that trunks of a few blocks stay of magnitude ~1."""
    g = torch.Generator().manual_seed(seed)
    weights = [
        torch.randn(channels, in_channels, 3, 3, generator=g, dtype=torch.float64) * (9 * in_channels) ** -0.5
    ]
    weights += [
        torch.randn(channels, channels, 3, 3, generator=g, dtype=torch.float64) * (9 * channels) ** -0.5
        for _ in range(2 * blocks)
    ]
    biases = [torch.randn(channels, generator=g, dtype=torch.float64) * 0.1 for _ in weights]
    return weights, biases


def to(tensors, device, dtype):
    """A list of tensors (None stays None) on `device` in `dtype`."""
    return [None if t is None else t.to(device=device, dtype=dtype) for t in tensors]


def strided_view_of_nan_buffer(t, device, dtype=torch.float32):
    """`t` (None stays None) as every other element of the last dimension of a NaN-filled buffer on
    `device` in `dtype`: an op that reads outside the view, or assumes a unit stride, gets NaNs."""
    if t is None:
        return None
    big = torch.full((*t.shape[:-1], 2 * t.shape[-1] + 1), float("nan"), dtype=dtype, device=device)
    big[..., 1::2] = t.to(device=device, dtype=dtype)
    return big[..., 1::2]


def assert_layout_like_fake(out, like):
    """The op's output strides are its fake kernel's (torch.empty in suggest_memory_format(like)) along
    every dimension longer than 1, as torch's own fake-tensor checks compare them: the stride of a
    size-1 dimension never addresses memory, and C++'s and Python's format guesses differ there."""
    ref = torch.empty(
        out.shape, dtype=out.dtype, device=out.device, memory_format=suggest_memory_format(like)
    )
    significant = [d for d in range(out.dim()) if out.shape[d] > 1]
    assert [out.stride(d) for d in significant] == [ref.stride(d) for d in significant], (
        out.stride(),
        ref.stride(),
    )


def force_onednn_bf16(monkeypatch):
    """Forces the CPU kernels' oneDNN path for bfloat16 (VSR_FAST_CPU_BF16=onednn, read per call),
    which they take by themselves only on CPUs with bf16 hardware. Returns whether ATen's oneDNN runs
    bf16 convolutions on this CPU at all (AVX-512 or native bf16); on an AVX2 CPU it refuses them
    with "bf16 path needs the cpu support ...", the error `assert_onednn_bf16_refused` expects."""
    monkeypatch.setenv("VSR_FAST_CPU_BF16", "onednn")
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def assert_onednn_bf16_refused(call):
    """On a CPU where oneDNN runs no bf16: the forced call reached oneDNN (which names its refusal),
    so bf16 is routed there; its numerics cannot be checked on such a CPU."""
    import pytest

    with pytest.raises(RuntimeError, match="bf16 path needs the cpu support"):
        call()


def fused_capable():
    """Whether this GPU can run the fused residual-block kernel (sm_80+)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


# ---- fake kernels against real ones ---------------------------------------------------------------


def _map_tensors(value, fn):
    if torch.is_tensor(value):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def _first_line(exc):
    return " ".join(str(exc).split("\n")[0].split())


def assert_fake_raises_like_real(call, *args):
    """`call(*args)` raises RuntimeError on the real tensors; the fake kernel, run on fake copies of
    the same arguments (as torch.compile and the meta device run it), must raise the same message:
    vsr_fast/ops/_checks.py mirrors the C++ checks word for word. Returns the message."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        call(*args)
    except RuntimeError as exc:
        real = _first_line(exc)
    else:
        raise AssertionError("the real kernel accepted the arguments")
    with FakeTensorMode() as mode:
        fakes = _map_tensors(args, mode.from_tensor)
        try:
            call(*fakes)
        except RuntimeError as exc:
            fake = _first_line(exc)
        else:
            raise AssertionError(f"the fake kernel accepted what the real one refused: {real}")
    assert fake == real, f"fake kernel: {fake!r}\nreal kernel: {real!r}"
    return real


def assert_mixed_meta_refused(op, call, *args):
    """With any one tensor argument on the meta device and the rest on CPU, the dispatcher picks the
    Meta key and runs the fake kernel, which must refuse the mix (naming the op and the devices)
    instead of returning an uninitialised CPU tensor."""
    import pytest

    flat = []
    _map_tensors(args, flat.append)
    for target in range(len(flat)):
        seen = iter(range(len(flat)))

        def move(t, target=target, seen=seen):
            return t.to("meta") if next(seen) == target else t

        with pytest.raises(RuntimeError, match=rf"{op}.*(device|meta)") as info:
            call(*_map_tensors(args, move))
        assert "meta" in str(info.value), str(info.value)


def run_python(code, timeout=600):
    """Runs `code` in a fresh interpreter that imports the very vsr_fast this process imported
    (installed, or built in place) and these helpers, from a neutral directory (python -c would put
    the current one, maybe a source tree without the compiled library, first on sys.path). For cases
    that may crash the process (SIGFPE, SIGSEGV): returns the CompletedProcess, whose negative
    returncode names the signal."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import vsr_fast

    env = dict(os.environ)
    roots = [str(Path(vsr_fast.__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
    env["PYTHONPATH"] = os.pathsep.join(roots + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tempfile.gettempdir(),
    )


def rss_kib(field):
    """This process's VmRSS or VmHWM (peak RSS) in KiB, from /proc/self/status (Linux). Also what the
    memory benchmarks read (benchmarks/propagation_step_memory.py), which is why it lives here."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")
