// CUDA kernel of vsr_fast::spynet_basic_module: the shared ATen library path (channels_last cuDNN
// convolutions, each ReLU in place). No custom kernel, so nothing here that the CPU tests do not
// exercise except the device: correct by construction.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "vsr_fast/spynet_basic_module.h"

namespace vsr_fast {
namespace {

at::Tensor spynet_basic_module_cuda(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  check_spynet_basic_module_args(x, weights, biases);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto format = x.suggest_memory_format();
  if (x.size(0) == 0 || x.size(2) == 0 || x.size(3) == 0) {
    return at::empty({x.size(0), weights[spynet::kConvs - 1].size(0), x.size(2), x.size(3)},
                     x.options().memory_format(format));
  }
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  return spynet::library_path(x, weights, biases).contiguous(format);
}

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CUDA, m) { m.impl("spynet_basic_module", &vsr_fast::spynet_basic_module_cuda); }
