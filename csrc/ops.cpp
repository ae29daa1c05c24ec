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
  // [entries, bytes, byte bound] of the CPU kernels' cache of oneDNN-reordered weights
  // (csrc/cpu/onednn_conv.h)
  m.def("_cpu_weight_cache_stats() -> int[]");

  // interpolation: 0 bilinear, 1 nearest; padding_mode: 0 zeros, 1 border. flow is [N, H, W, 2] in
  // pixels, x displacement first.
  m.def(
      "flow_warp(Tensor x, Tensor flow, int interpolation, int padding_mode, bool align_corners) -> Tensor");
  // Returns (grad_x, grad_flow); an output whose output_mask entry is false is an empty [0] tensor.
  m.def(
      "_flow_warp_backward(Tensor grad_out, Tensor x, Tensor flow, int interpolation, "
      "int padding_mode, bool align_corners, bool[2] output_mask) -> (Tensor, Tensor)");

  // BasicVSR's propagation trunk: conv3x3(weights[0]) + LeakyReLU(0.1), then ResidualBlockNoBN k
  // (k = 0 .. blocks-1) = x + conv3x3(weights[2+2k], relu(conv3x3(weights[1+2k], x))). All convs
  // stride 1, padding 1, with bias. weights/biases: 1 + 2 * blocks entries.
  m.def("residual_trunk(Tensor x, Tensor[] weights, Tensor[] biases) -> Tensor");
  // One recurrent step: the trunk applied to cat[lr, feature?, warp(state, flow)] without forming
  // the concatenation separately. state None: a zero state (first frame); flow None: no warp. The warp
  // is flow_warp's bilinear, zeros padding, align_corners=True.
  m.def(
      "propagation_step(Tensor lr, Tensor? feature, Tensor? state, Tensor? flow, Tensor[] weights, "
      "Tensor[] biases) -> Tensor");
  // IconVSR's keyframe refill fusion: conv3x3(cat[state, refill], weight) + bias, no activation,
  // without forming the concatenation. weight [C, C_state + C_refill, 3, 3].
  m.def("keyframe_fusion(Tensor state, Tensor refill, Tensor weight, Tensor bias) -> Tensor");
  // The x4 reconstruction tail of BasicVSR / IconVSR. With fusion_weight (BasicVSR): feat =
  // LeakyReLU(conv1x1(cat[feat, feat_forward?], fusion_weight) + fusion_bias) first. Then, with weights /
  // biases = [upsample1, upsample2, conv_hr, conv_last] (3x3, stride 1, padding 1): two stages of
  // LeakyReLU(pixel_shuffle(conv(x), 2)), LeakyReLU(conv_hr(x)), and conv_last(x) + the bilinear x4
  // upsampling of lr (align_corners=False). LeakyReLU slope 0.1. Output [N, 3, 4H, 4W].
  m.def(
      "reconstruction_tail(Tensor lr, Tensor feat, Tensor? feat_forward, Tensor? fusion_weight, "
      "Tensor? fusion_bias, Tensor[] weights, Tensor[] biases) -> Tensor");
  // One pyramid level of SPyNet (its basic module): five 7x7 convolutions, stride 1, padding 3, with bias,
  // a ReLU after each but the last (8 -> 32 -> 64 -> 32 -> 16 -> 2 channels in the official network).
  // x [N, C_in, H, W] -> [N, C_out of weights[4], H, W].
  m.def("spynet_basic_module(Tensor x, Tensor[] weights, Tensor[] biases) -> Tensor");
  // DCNv2 (EDVR's ModulatedDCNPack): offsets [N, 2 * deform_groups * kh * kw, H_out, W_out] in the
  // mmcv/torchvision layout (y then x per tap), mask [N, deform_groups * kh * kw, H_out, W_out] (already
  // through its sigmoid). Only groups=1. Returns (grad_x, grad_offset, grad_mask, grad_weight, grad_bias);
  // an output whose output_mask entry is false (or grad_bias without a bias) is an empty [0] tensor.
  m.def(
      "modulated_deform_conv(Tensor x, Tensor offset, Tensor mask, Tensor weight, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, int deform_groups) -> Tensor");
  m.def(
      "_modulated_deform_conv_backward(Tensor grad_out, Tensor x, Tensor offset, Tensor mask, "
      "Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "int deform_groups, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// An importable, empty module: importing vsr_fast._C loads this library and runs the registrations
// above. Everything is reached through torch.ops.vsr_fast.
extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
