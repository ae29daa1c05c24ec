// Every schema of the vsr_fast operator library, and the module object Python imports as vsr_fast._C.
// Kernels register per backend in csrc/cpu and csrc/cuda; autograd and fake kernels in vsr_fast/ops.
#include <Python.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#ifdef VSR_FAST_WITH_CUDA
#include <cuda.h>  // CUDA_VERSION
#endif

#ifndef VSR_FAST_CUDA_ARCHS
#define VSR_FAST_CUDA_ARCHS ""
#endif

namespace vsr_fast {
namespace {

// CUDA runtime version the CUDA kernels were compiled with, or -1 for a CPU-only build.
int64_t cuda_version() {
#ifdef VSR_FAST_WITH_CUDA
  return CUDA_VERSION;
#else
  return -1;
#endif
}

// "major.minor.patch" of the torch headers this library was compiled against: the Python side
// refuses to run against any other torch, whose C++ ABI may differ.
std::string compiled_torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

std::string compiled_cuda_archs() { return VSR_FAST_CUDA_ARCHS; }

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY(vsr_fast, m) {
  m.def("_cuda_version() -> int", &vsr_fast::cuda_version);
  m.def("_compiled_torch_version() -> str", &vsr_fast::compiled_torch_version);
  m.def("_compiled_cuda_archs() -> str", &vsr_fast::compiled_cuda_archs);

  // interpolation: 0 bilinear, 1 nearest; padding_mode: 0 zeros, 1 border. flow is [N, H, W, 2] in
  // pixels, x displacement first.
  m.def("flow_warp(Tensor x, Tensor flow, int interpolation, int padding_mode, bool align_corners) -> Tensor");
  // Returns (grad_x, grad_flow); an output whose output_mask entry is false is an empty [0] tensor.
  m.def("_flow_warp_backward(Tensor grad_out, Tensor x, Tensor flow, int interpolation, "
        "int padding_mode, bool align_corners, bool[2] output_mask) -> (Tensor, Tensor)");
}

// An importable, empty module: importing vsr_fast._C loads this library and runs the registrations
// above. Everything is reached through torch.ops.vsr_fast.
extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
