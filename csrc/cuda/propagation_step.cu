// CUDA kernel of vsr_fast::propagation_step: lr, the feature and the warped state go straight into
// their channel slices of the trunk's channels_last input (the warp is flow_warp's CUDA kernel
// writing into its slice), then residual_trunk's CUDA body runs on that buffer.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "cuda_kernels.h"
#include "vsr_fast/flow_warp.h"
#include "vsr_fast/propagation_step.h"

namespace vsr_fast {
namespace {

at::Tensor propagation_step_cuda(const at::Tensor& lr, const std::optional<at::Tensor>& feature,
                                 const std::optional<at::Tensor>& state,
                                 const std::optional<at::Tensor>& flow, at::TensorList weights,
                                 at::TensorList biases) {
  const char* op = "vsr_fast::propagation_step";
  const int64_t channels = check_propagation_step_args(lr, feature, state, flow, weights, biases);
  TORCH_CHECK(lr.is_cuda(), op, ": CUDA kernel called with lr on ", lr.device());
  const c10::cuda::CUDAGuard guard(lr.device());
  const at::MemoryFormat format = lr.suggest_memory_format();
  const int64_t n = lr.size(0), height = lr.size(2), width = lr.size(3);
  if (n * channels * height * width == 0) {
    return at::empty({n, channels, height, width}, lr.options().memory_format(format));
  }
  const at::Tensor input =
      assemble_step_input(lr, feature, state, flow, channels,
                          [](const at::Tensor& s, const at::Tensor& f, const at::Tensor& out) {
                            flow_warp_cuda_into(s, f, out, flow_warp_math::kBilinear, flow_warp_math::kZeros,
                                                /*align_corners=*/true);
                          });
  // The trunk returns channels_last; convert only when the op's first input is in another format.
  const at::Tensor out = residual_trunk_cuda_channels_last(op, input, weights, biases);
  return format == at::MemoryFormat::ChannelsLast ? out : out.contiguous(format);
}

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CUDA, m) { m.impl("propagation_step", &vsr_fast::propagation_step_cuda); }
