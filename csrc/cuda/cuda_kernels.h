// CUDA kernels that other CUDA ops call directly (no dispatcher round trip, no intermediate tensor).
#pragma once

#include <ATen/core/Tensor.h>

namespace vsr_fast {

// flow_warp's CUDA forward writing into `out` (x's shape, any strides, e.g. a channel slice of a
// larger channels_last buffer). Checks its arguments like the op does.
void flow_warp_cuda_into(const at::Tensor& x, const at::Tensor& flow, const at::Tensor& out,
                         int64_t interpolation, int64_t padding_mode, bool align_corners);

// residual_trunk's CUDA body over a channels_last dense input whose arguments were already checked,
// on the caller's device guard; returns a channels_last dense [N, C, H, W] tensor. `op` names the
// calling op in errors (VSR_FAST_TRUNK_IMPL settings it cannot honour).
at::Tensor residual_trunk_cuda_channels_last(const char* op, const at::Tensor& input_cl,
                                             at::TensorList weights, at::TensorList biases);

}  // namespace vsr_fast
