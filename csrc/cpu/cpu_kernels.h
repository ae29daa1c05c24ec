// CPU kernels that other CPU ops call directly (no dispatcher round trip, no intermediate tensor).
#pragma once

#include <ATen/core/Tensor.h>

namespace vsr_fast {

// flow_warp's CPU forward writing into `out` (x's shape, any strides, e.g. a channel slice of a
// larger buffer). Checks its arguments like the op does.
void flow_warp_cpu_into(const at::Tensor& x, const at::Tensor& flow, const at::Tensor& out,
                        int64_t interpolation, int64_t padding_mode, bool align_corners);

// residual_trunk's CPU body over an NHWC (channels_last dense) input whose arguments were already
// checked, with autograd already excluded by the caller; returns an NHWC [N, C, H, W] tensor.
at::Tensor residual_trunk_cpu_nhwc(const at::Tensor& input_nhwc, at::TensorList weights,
                                   at::TensorList biases);

}  // namespace vsr_fast
