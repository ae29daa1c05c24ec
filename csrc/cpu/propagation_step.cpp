// CPU kernel of vsr_fast::propagation_step: lr, the feature and the warped state are written
// straight into the channel slices of the trunk's NHWC input buffer (the warp is flow_warp's CPU
// kernel writing into its slice), then residual_trunk's CPU body runs on that buffer.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <optional>

#include "cpu_kernels.h"
#include "vsr_fast/flow_warp.h"
#include "vsr_fast/propagation_step.h"

namespace vsr_fast {
namespace {

at::Tensor propagation_step_cpu(const at::Tensor& lr, const std::optional<at::Tensor>& feature,
                                const std::optional<at::Tensor>& state, const std::optional<at::Tensor>& flow,
                                at::TensorList weights, at::TensorList biases) {
  const int64_t channels = check_propagation_step_args(lr, feature, state, flow, weights, biases);
  // The output has the memory format the op promises: that of its first input.
  const auto format = lr.suggest_memory_format();
  if (lr.size(0) == 0 || lr.size(2) == 0 || lr.size(3) == 0) {
    return at::empty({lr.size(0), channels, lr.size(2), lr.size(3)}, lr.options().memory_format(format));
  }
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  const at::Tensor input =
      assemble_step_input(lr, feature, state, flow, channels,
                          [](const at::Tensor& s, const at::Tensor& f, const at::Tensor& out) {
                            flow_warp_cpu_into(s, f, out, flow_warp_math::kBilinear, flow_warp_math::kZeros,
                                               /*align_corners=*/true);
                          });
  return residual_trunk_cpu_nhwc(input, weights, biases).contiguous(format);
}

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CPU, m) { m.impl("propagation_step", &vsr_fast::propagation_step_cpu); }
