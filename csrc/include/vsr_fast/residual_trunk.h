// Argument checks of vsr_fast::residual_trunk and vsr_fast::propagation_step, shared by the CPU and
// CUDA kernels so both reject the same inputs with the same words. Host-only.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <optional>

namespace vsr_fast {

// Returns the number of residual blocks. in_channels: the channels the input conv expects.
inline int64_t check_trunk_weights(const char* op, at::TensorList weights, at::TensorList biases,
                                   int64_t in_channels, const at::Tensor& like) {
  TORCH_CHECK(!weights.empty() && weights.size() % 2 == 1, op,
              ": expected 1 + 2 * num_blocks weights (input conv, then conv1/conv2 per block), got ",
              weights.size());
  TORCH_CHECK(biases.size() == weights.size(), op, ": expected one bias per weight (", weights.size(),
              "), got ", biases.size());
  const int64_t c = weights[0].dim() == 4 ? weights[0].size(0) : -1;
  for (size_t i = 0; i < weights.size(); ++i) {
    const int64_t expect_in = i == 0 ? in_channels : c;
    TORCH_CHECK(weights[i].dim() == 4 && weights[i].size(0) == c && weights[i].size(1) == expect_in &&
                    weights[i].size(2) == 3 && weights[i].size(3) == 3,
                op, ": weights[", i, "] must be [", c, ", ", expect_in, ", 3, 3], got ",
                weights[i].sizes());
    TORCH_CHECK(biases[i].dim() == 1 && biases[i].size(0) == c, op, ": biases[", i, "] must be [", c,
                "], got ", biases[i].sizes());
    TORCH_CHECK(weights[i].scalar_type() == like.scalar_type() &&
                    biases[i].scalar_type() == like.scalar_type(),
                op, ": weights and biases must have the input's dtype ", like.scalar_type(),
                ", got ", weights[i].scalar_type(), " / ", biases[i].scalar_type(), " at index ", i);
    TORCH_CHECK(weights[i].device() == like.device() && biases[i].device() == like.device(), op,
                ": weights and biases must be on the input's device ", like.device(), ", got ",
                weights[i].device(), " / ", biases[i].device(), " at index ", i);
  }
  return static_cast<int64_t>(weights.size() / 2);
}

inline void check_residual_trunk_args(const at::Tensor& x, at::TensorList weights,
                                      at::TensorList biases) {
  const char* op = "vsr_fast::residual_trunk";
  TORCH_CHECK(x.dim() == 4, op, ": expected x [N, C_in, H, W], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected a floating dtype, got ",
              x.scalar_type());
  check_trunk_weights(op, weights, biases, x.size(1), x);
}

// Returns the state channel count C (the trunk's width).
inline int64_t check_propagation_step_args(const at::Tensor& lr,
                                           const std::optional<at::Tensor>& feature,
                                           const std::optional<at::Tensor>& state,
                                           const std::optional<at::Tensor>& flow,
                                           at::TensorList weights, at::TensorList biases) {
  const char* op = "vsr_fast::propagation_step";
  TORCH_CHECK(lr.dim() == 4, op, ": expected lr [N, C_lr, H, W], got ", lr.sizes());
  TORCH_CHECK(at::isFloatingType(lr.scalar_type()), op, ": expected a floating dtype, got ",
              lr.scalar_type());
  TORCH_CHECK(!weights.empty() && weights[0].dim() == 4, op,
              ": expected weights[0] [C, C_in, 3, 3], got ", weights.empty() ? 0 : weights[0].dim(),
              "-d");
  const int64_t c = weights[0].size(0);
  auto check_image = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.dim() == 4 && t.size(0) == lr.size(0) && t.size(2) == lr.size(2) &&
                    t.size(3) == lr.size(3),
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
    TORCH_CHECK(flow->device() == lr.device(), op, ": flow must be on lr's device ", lr.device(),
                ", got ", flow->device());
    const bool reduced = lr.scalar_type() == at::kHalf || lr.scalar_type() == at::kBFloat16;
    TORCH_CHECK(flow->scalar_type() == lr.scalar_type() ||
                    (reduced && flow->scalar_type() == at::kFloat),
                op, ": flow must have lr's dtype (or float32 for float16/bfloat16), got ",
                flow->scalar_type());
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
                               const std::optional<at::Tensor>& state,
                               const std::optional<at::Tensor>& flow, int64_t channels,
                               WarpInto&& warp_into) {
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

inline void check_keyframe_fusion_args(const at::Tensor& state, const at::Tensor& refill,
                                       const at::Tensor& weight, const at::Tensor& bias) {
  const char* op = "vsr_fast::keyframe_fusion";
  TORCH_CHECK(state.dim() == 4 && refill.dim() == 4 && state.size(0) == refill.size(0) &&
                  state.size(2) == refill.size(2) && state.size(3) == refill.size(3),
              op, ": expected state [N, C_s, H, W] and refill [N, C_r, H, W] of one size, got ",
              state.sizes(), " and ", refill.sizes());
  TORCH_CHECK(at::isFloatingType(state.scalar_type()) && refill.scalar_type() == state.scalar_type() &&
                  refill.device() == state.device(),
              op, ": state and refill need one floating dtype and device, got ", state.scalar_type(),
              " on ", state.device(), " and ", refill.scalar_type(), " on ", refill.device());
  const at::Tensor weights[] = {weight};
  const at::Tensor biases[] = {bias};
  check_trunk_weights(op, weights, biases, state.size(1) + refill.size(1), state);
}

}  // namespace vsr_fast
