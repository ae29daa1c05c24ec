// Argument checks and input assembly of vsr_fast::propagation_step, shared by the CPU and CUDA
// kernels: both reject the same inputs with the same words and lay out the trunk's input alike.
// Host-only.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <optional>

#include "vsr_fast/residual_trunk.h"

namespace vsr_fast {

// Returns the state channel count C (the trunk's width).
inline int64_t check_propagation_step_args(const at::Tensor& lr, const std::optional<at::Tensor>& feature,
                                           const std::optional<at::Tensor>& state,
                                           const std::optional<at::Tensor>& flow, at::TensorList weights,
                                           at::TensorList biases) {
  const char* op = "vsr_fast::propagation_step";
  TORCH_CHECK(lr.defined(), op, ": lr must be a tensor, got None");
  TORCH_CHECK(lr.dim() == 4, op, ": expected lr [N, C_lr, H, W], got ", lr.sizes());
  TORCH_CHECK(at::isFloatingType(lr.scalar_type()), op, ": expected a floating dtype, got ",
              lr.scalar_type());
  TORCH_CHECK(!weights.empty() && weights[0].defined() && weights[0].dim() == 4, op,
              ": expected weights[0] [C, C_in, 3, 3], got ",
              weights.empty() || !weights[0].defined() ? 0 : weights[0].dim(), "-d");
  const int64_t c = weights[0].size(0);
  auto check_image = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.dim() == 4 && t.size(0) == lr.size(0) && t.size(2) == lr.size(2) && t.size(3) == lr.size(3),
                op, ": expected ", name, " [N, *, H, W] matching lr ", lr.sizes(), ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == lr.scalar_type() && t.device() == lr.device(), op, ": ", name,
                " must have lr's dtype and device (", lr.scalar_type(), ", ", lr.device(), "), got ",
                t.scalar_type(), ", ", t.device());
  };
  int64_t in_channels = lr.size(1) + c;
  if (feature.has_value()) {
    check_image(*feature, "feature");
    in_channels += feature->size(1);
  }
  if (state.has_value()) {
    check_image(*state, "state");
    TORCH_CHECK(state->size(1) == c, op, ": state must have the trunk's ", c, " channels, got ",
                state->sizes());
  }
  if (flow.has_value()) {
    TORCH_CHECK(state.has_value(), op, ": a flow needs a state to warp");
    TORCH_CHECK(flow->dim() == 4 && flow->size(0) == lr.size(0) && flow->size(1) == lr.size(2) &&
                    flow->size(2) == lr.size(3) && flow->size(3) == 2,
                op, ": expected flow [N, H, W, 2] matching lr ", lr.sizes(), ", got ", flow->sizes());
    TORCH_CHECK(flow->device() == lr.device(), op, ": flow must be on lr's device ", lr.device(), ", got ",
                flow->device());
    const bool reduced = lr.scalar_type() == at::kHalf || lr.scalar_type() == at::kBFloat16;
    TORCH_CHECK(flow->scalar_type() == lr.scalar_type() || (reduced && flow->scalar_type() == at::kFloat), op,
                ": flow must have lr's dtype (or float32 for float16/bfloat16), got ", flow->scalar_type());
  }
  check_trunk_weights(op, weights, biases, in_channels, lr);
  return c;
}

// propagation_step's trunk input cat[lr, feature?, warp(state, flow)], written slice by slice into
// one channels_last buffer (no separate concatenation). warp_into(state, flow, slice) is the
// backend's flow_warp forward (bilinear, zeros, align_corners=True); state None is the zero state,
// flow None copies the state unwarped.
template <typename WarpInto>
at::Tensor assemble_step_input(const at::Tensor& lr, const std::optional<at::Tensor>& feature,
                               const std::optional<at::Tensor>& state, const std::optional<at::Tensor>& flow,
                               int64_t channels, WarpInto&& warp_into) {
  const int64_t c_lr = lr.size(1), c_feat = feature.has_value() ? feature->size(1) : 0;
  at::Tensor input = at::empty({lr.size(0), c_lr + c_feat + channels, lr.size(2), lr.size(3)},
                               lr.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (c_lr > 0) input.narrow(1, 0, c_lr).copy_(lr);
  if (c_feat > 0) input.narrow(1, c_lr, c_feat).copy_(*feature);
  at::Tensor slot = input.narrow(1, c_lr + c_feat, channels);
  if (!state.has_value()) {
    slot.zero_();
  } else if (!flow.has_value()) {
    slot.copy_(*state);
  } else {
    warp_into(*state, *flow, slot);
  }
  return input;
}

}  // namespace vsr_fast
