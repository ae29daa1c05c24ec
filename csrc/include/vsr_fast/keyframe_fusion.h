// Argument checks of vsr_fast::keyframe_fusion, shared by the CPU and CUDA kernels. Host-only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "vsr_fast/residual_trunk.h"

namespace vsr_fast {

inline void check_keyframe_fusion_args(const at::Tensor& state, const at::Tensor& refill,
                                       const at::Tensor& weight, const at::Tensor& bias) {
  const char* op = "vsr_fast::keyframe_fusion";
  TORCH_CHECK(state.defined() && refill.defined() && weight.defined() && bias.defined(), op,
              ": state, refill, weight and bias must be tensors, got None for ",
              !state.defined()    ? "state"
              : !refill.defined() ? "refill"
              : !weight.defined() ? "weight"
                                  : "bias");
  TORCH_CHECK(state.dim() == 4 && refill.dim() == 4 && state.size(0) == refill.size(0) &&
                  state.size(2) == refill.size(2) && state.size(3) == refill.size(3),
              op, ": expected state [N, C_s, H, W] and refill [N, C_r, H, W] of one size, got ",
              state.sizes(), " and ", refill.sizes());
  TORCH_CHECK(at::isFloatingType(state.scalar_type()) && refill.scalar_type() == state.scalar_type() &&
                  refill.device() == state.device(),
              op, ": state and refill need one floating dtype and device, got ", state.scalar_type(), " on ",
              state.device(), " and ", refill.scalar_type(), " on ", refill.device());
  const at::Tensor weights[] = {weight};
  const at::Tensor biases[] = {bias};
  check_trunk_weights(op, weights, biases, state.size(1) + refill.size(1), state);
}

}  // namespace vsr_fast
