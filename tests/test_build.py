"""The installed extension is the one that was asked for."""
import os

import torch

import vsr_fast


def test_requested_cuda_build_has_cuda_kernels():
    info = vsr_fast.build_info()
    if os.environ.get("VSR_FAST_EXPECT_CUDA") == "1":
        assert info["cuda"], f"VSR_FAST_CUDA=1 was requested but the build has no CUDA kernels: {info}"
        assert info["cuda_archs"], info
        # the CUDA kernels are registered with the dispatcher, not just compiled
        assert torch._C._dispatch_has_kernel_for_dispatch_key("vsr_fast::flow_warp", "CUDA")
    if info["cuda"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("vsr_fast::_flow_warp_backward", "CUDA")


def test_cpu_kernels_are_registered():
    for op in ("vsr_fast::flow_warp", "vsr_fast::_flow_warp_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op


def test_mismatched_torch_is_refused_with_rebuild_advice(monkeypatch):
    import importlib

    import vsr_fast._extension as ext

    monkeypatch.setattr(torch, "__version__", "1.0.0")
    try:
        importlib.reload(ext)
    except ImportError as exc:
        assert "pip install --no-build-isolation" in str(exc) and "1.0.0" in str(exc)
    else:
        raise AssertionError("importing against another torch version must fail")
    finally:
        monkeypatch.undo()
        importlib.reload(ext)
