"""Build vsr_fast and its C++/CUDA extension vsr_fast._C.

CUDA decision (printed at build time):
  VSR_FAST_CUDA=0      CPU kernels only.
  VSR_FAST_CUDA=1      CPU + CUDA kernels; a clear error if nvcc or a CUDA build of torch is missing.
                       With no GPU visible and TORCH_CUDA_ARCH_LIST unset, a default list is used.
  unset                CUDA kernels iff nvcc, a CUDA build of torch and a GPU are all present.
The extension must be compiled against the torch it runs with: vsr_fast refuses to import otherwise.
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup


def _toolkit_of(bin_dir):
    """The CUDA toolkit whose bin/ is `bin_dir`, if it has the headers or the runtime library there."""
    root = os.path.dirname(os.path.abspath(bin_dir))
    if os.path.isfile(os.path.join(root, "include", "cuda.h")) or glob.glob(
        os.path.join(root, "lib64", "libcudart*")
    ):
        return root
    return None


def _bin_dir_nvcc_reports(nvcc):
    """Where the compiler that `nvcc` runs lives, as nvcc itself reports it (`_HERE_` of --dryrun)."""
    try:
        done = subprocess.run(
            [nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (done.stderr + done.stdout).splitlines():
        if line.startswith("#$ _HERE_="):
            return line.split("=", 1)[1].strip()
    return None


def _real_cuda_home():
    # `nvcc` on PATH may be a symlink or a wrapper script (here /usr/local/bin/nvcc, a script that
    # execs /usr/local/cuda-13.0/bin/nvcc); torch would then take its parent's parent (/usr/local) as
    # CUDA_HOME and fail to find the CUDA headers and libcudart. Resolve the toolkit from the compiler
    # nvcc really runs (the symlink followed, else nvcc's own report of where it runs from), before
    # torch.utils.cpp_extension reads CUDA_HOME; /usr/local/cuda when neither is a toolkit.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        candidates.append(os.path.dirname(os.path.realpath(nvcc)))
        reported = _bin_dir_nvcc_reports(nvcc)
        if reported:
            candidates.append(reported)
    candidates.append("/usr/local/cuda/bin")
    for bin_dir in candidates:
        root = _toolkit_of(bin_dir)
        if root is not None and os.path.exists(os.path.join(root, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = root
            return


_real_cuda_home()

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
# Architectures for CUDA builds on machines without a GPU to ask (Volta is gone from CUDA 13).
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"


def log(msg):
    print(f"vsr_fast setup: {msg}", file=sys.stderr, flush=True)


def decide_cuda():
    flag = os.environ.get("VSR_FAST_CUDA", "").strip()
    has_nvcc = cpp_extension.CUDA_HOME is not None and os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    )
    torch_cuda = torch.version.cuda
    has_gpu = torch_cuda is not None and torch.cuda.is_available()
    facts = (
        f"nvcc={'yes' if has_nvcc else 'no'} (CUDA_HOME={cpp_extension.CUDA_HOME}), "
        f"torch {torch.__version__} cuda={torch_cuda}, gpu visible={'yes' if has_gpu else 'no'}"
    )
    if flag == "0":
        log(f"VSR_FAST_CUDA=0 -> CPU kernels only [{facts}]")
        return False
    if flag == "1":
        if not has_nvcc or torch_cuda is None:
            raise RuntimeError(
                "vsr_fast setup: VSR_FAST_CUDA=1 but "
                + (
                    "nvcc was not found (set CUDA_HOME)"
                    if not has_nvcc
                    else f"torch {torch.__version__} is a CPU-only build"
                )
                + f" [{facts}]"
            )
        if not has_gpu and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        log(
            f"VSR_FAST_CUDA=1 -> CPU + CUDA kernels, TORCH_CUDA_ARCH_LIST="
            f"{os.environ.get('TORCH_CUDA_ARCH_LIST', '(this GPU)')} [{facts}]"
        )
        return True
    if flag:
        raise RuntimeError(f"vsr_fast setup: VSR_FAST_CUDA must be 0, 1 or unset, got {flag!r}")
    use = has_nvcc and torch_cuda is not None and has_gpu
    log(f"VSR_FAST_CUDA unset -> {'CPU + CUDA' if use else 'CPU only'} kernels [{facts}]")
    return use


def pip_nvidia_include_dirs():
    # pip's CUDA wheels carry headers (cuBLAS, cuSPARSE, cuDNN) that a bare nvcc install may lack and
    # that ATen's CUDA headers include.
    dirs = []
    for path in sys.path:
        dirs += glob.glob(os.path.join(path, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def cuda_archs_macro():
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not archs and torch.cuda.is_available():
        archs = ";".join(
            f"{a}.{b}"
            for a, b in {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        )
    return (archs or "").replace(" ", ";")


def extensions():
    with_cuda = decide_cuda()
    sources = [os.path.join("csrc", "ops.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # The C++ standard is the one torch asks for. -fopenmp: at::parallel_for is an inline template
    # that is only parallel where the including code is compiled with OpenMP (torch's build is).
    cxx = ["-O3", "-fvisibility=hidden", "-fopenmp"]
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    if os.environ.get("VSR_FAST_PTXAS_VERBOSE") == "1":
        nvcc.append("-Xptxas=-v")
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros += [
            ("VSR_FAST_WITH_CUDA", None),
            ("VSR_FAST_CUDA_ARCHS", '"' + cuda_archs_macro() + '"'),
        ]
        include_dirs += pip_nvidia_include_dirs()
        ext_cls = cpp_extension.CUDAExtension
        extra = {"cxx": cxx, "nvcc": nvcc}
    else:
        ext_cls = cpp_extension.CppExtension
        extra = {"cxx": cxx}
    return [
        ext_cls(
            "vsr_fast._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    packages=find_packages(include=["vsr_fast", "vsr_fast.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
