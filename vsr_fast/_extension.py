"""Loads the compiled library vsr_fast._C and reports what it was built with."""

import os

import torch
from packaging.version import Version

_REBUILD = (
    "Rebuild it against the torch you run ({runtime}): from the vsr_fast source tree, "
    "`pip install --no-build-isolation .` (add VSR_FAST_CUDA=1 for the CUDA kernels)."
)


def _release(version_string):
    return ".".join(str(p) for p in Version(str(version_string)).release[:3])


try:
    from . import _C  # noqa: F401  (registers the torch.ops.vsr_fast operators)
except ImportError as exc:  # missing build, or a torch whose C++ ABI differs from the build's
    _here = os.path.dirname(os.path.abspath(__file__))
    _built = any(name.startswith("_C.") for name in os.listdir(_here))
    _where = (
        ""
        if _built
        else f" There is no compiled library in {_here}: this is a source tree that was never built "
        "(a Python started in the repository root imports it instead of the installed package; "
        "run from another directory), or the build failed."
    )
    raise ImportError(
        f"vsr_fast: the compiled extension vsr_fast._C could not be loaded ({exc}).{_where} "
        + _REBUILD.format(runtime=torch.__version__)
    ) from exc

_COMPILED_TORCH = torch.ops.vsr_fast._compiled_torch_version()
if _COMPILED_TORCH != _release(torch.__version__):
    raise ImportError(
        f"vsr_fast: vsr_fast._C was compiled against torch {_COMPILED_TORCH} but torch "
        f"{torch.__version__} is running; C++ extensions only work with the torch they were built "
        "with. " + _REBUILD.format(runtime=torch.__version__)
    )


def build_info():
    """What the installed extension contains.

    Returns a dict: ``cuda`` (bool, CUDA kernels compiled in), ``cuda_version`` (e.g. ``"13.0"`` or
    None), ``cuda_archs`` (list of compute capabilities the kernels were compiled for),
    ``torch_compiled`` / ``torch_runtime`` (versions), ``cuda_available`` (a GPU is usable now).
    """
    cuda_version = torch.ops.vsr_fast._cuda_version()
    archs = torch.ops.vsr_fast._compiled_cuda_archs()
    return {
        "cuda": cuda_version >= 0,
        "cuda_version": (
            f"{cuda_version // 1000}.{cuda_version % 1000 // 10}" if cuda_version >= 0 else None
        ),
        "cuda_archs": [a for a in archs.replace(",", ";").split(";") if a],
        "torch_compiled": _COMPILED_TORCH,
        "torch_runtime": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
