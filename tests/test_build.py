"""The installed extension is the one that was asked for, and every op csrc/ops.cpp defines has its
kernels: CPU, CUDA in a CUDA build, a fake (Meta) kernel, and autograd for the public ops."""

import os
import re
from pathlib import Path

import pytest
import torch

import vsr_fast

OPS_CPP = Path(__file__).resolve().parents[1] / "csrc" / "ops.cpp"


def defined_ops():
    """Names of every schema in csrc/ops.cpp (`m.def("name(...`; a schema may continue over several
    string literals)."""
    names = re.findall(r'm\.def\(\s*"([A-Za-z_][A-Za-z0-9_]*)\(', OPS_CPP.read_text())
    assert names, f"no m.def(...) schema found in {OPS_CPP}"
    return names


def registered_ops():
    return sorted(
        {s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("vsr_fast::")}
    )


def takes_tensors(name):
    schema = getattr(torch.ops.vsr_fast, name).default._schema
    return any("Tensor" in str(arg.type) for arg in schema.arguments)


def has_kernel(name, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"vsr_fast::{name}", key)


def test_the_library_registers_exactly_the_schemas_of_ops_cpp():
    assert registered_ops() == sorted(defined_ops())


@pytest.mark.parametrize("name", defined_ops())
def test_every_op_has_its_kernels(name):
    if not takes_tensors(name):  # build information, answered by a function of its own
        assert has_kernel(name, "CompositeImplicitAutograd"), name
        getattr(torch.ops.vsr_fast, name)()
        return
    assert has_kernel(name, "CPU"), f"vsr_fast::{name} has no CPU kernel"
    assert has_kernel(name, "CUDA") == vsr_fast.build_info()["cuda"], (
        f"vsr_fast::{name}: CUDA kernel registered = {has_kernel(name, 'CUDA')} in a build with "
        f"cuda = {vsr_fast.build_info()['cuda']}"
    )
    assert has_kernel(name, "Meta"), f"vsr_fast::{name} has no fake kernel (torch.library.register_fake)"
    if not name.startswith("_"):  # private backward ops are first-order only
        assert has_kernel(name, "Autograd"), (
            f"vsr_fast::{name} has no autograd (torch.library.register_autograd)"
        )


def test_requested_cuda_build_has_cuda_kernels():
    info = vsr_fast.build_info()
    if os.environ.get("VSR_FAST_EXPECT_CUDA") == "1":
        assert info["cuda"], f"VSR_FAST_CUDA=1 was requested but the build has no CUDA kernels: {info}"
        assert info["cuda_archs"], info


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
