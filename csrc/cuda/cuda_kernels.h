// CUDA kernels that other CUDA ops call directly (no dispatcher round trip, no intermediate tensor).
#pragma once

#include <ATen/core/Tensor.h>

namespace vsr_fast {

// flow_warp's CUDA forward writing into `out` (x's shape, any strides, e.g. a channel slice of a
// larger channels_last buffer). Checks its arguments like the op does.
void flow_warp_cuda_into(const at::Tensor& x, const at::Tensor& flow, const at::Tensor& out,
                         int64_t interpolation, int64_t padding_mode, bool align_corners);

}  // namespace vsr_fast
