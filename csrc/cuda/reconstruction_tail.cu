// CUDA kernel of vsr_fast::reconstruction_tail: the shared ATen library path (channels_last cuDNN
// convolutions, the 1x1 fusion as cuBLAS GEMMs over the NHWC rows, each LeakyReLU written straight into
// its pixel-shuffled place). No custom kernel, so nothing here that the CPU tests do not exercise
// except the device: correct by construction.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "vsr_fast/reconstruction_tail.h"

namespace vsr_fast {
namespace {

at::Tensor reconstruction_tail_cuda(const at::Tensor& lr, const at::Tensor& feat,
                                    const std::optional<at::Tensor>& feat_forward,
                                    const std::optional<at::Tensor>& fusion_weight,
                                    const std::optional<at::Tensor>& fusion_bias, at::TensorList weights,
                                    at::TensorList biases) {
  check_reconstruction_tail_args(lr, feat, feat_forward, fusion_weight, fusion_bias, weights, biases);
  const c10::cuda::CUDAGuard guard(lr.device());
  const auto format = lr.suggest_memory_format();
  if (lr.size(0) == 0 || lr.size(2) == 0 || lr.size(3) == 0) {
    return at::empty({lr.size(0), 3, 4 * lr.size(2), 4 * lr.size(3)}, lr.options().memory_format(format));
  }
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  return tail::library_path(lr, feat, feat_forward, fusion_weight, fusion_bias, weights, biases)
      .contiguous(format);
}

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CUDA, m) { m.impl("reconstruction_tail", &vsr_fast::reconstruction_tail_cuda); }
