// Argument checks of vsr_fast::residual_trunk, shared by the CPU and CUDA kernels so both reject the
// same inputs with the same words (check_trunk_weights also serves the ops built on the trunk's
// convolutions). Host-only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace vsr_fast {

// Returns the number of residual blocks. in_channels: the channels the input conv expects.
inline int64_t check_trunk_weights(const char* op, at::TensorList weights, at::TensorList biases,
                                   int64_t in_channels, const at::Tensor& like) {
  TORCH_CHECK(!weights.empty() && weights.size() % 2 == 1, op,
              ": expected 1 + 2 * num_blocks weights (input conv, then conv1/conv2 per block), got ",
              weights.size());
  TORCH_CHECK(biases.size() == weights.size(), op, ": expected one bias per weight (", weights.size(),
              "), got ", biases.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    TORCH_CHECK(weights[i].defined() && biases[i].defined(), op, ": weights[", i, "] and biases[", i,
                "] must be tensors, got None");
  }
  const int64_t c = weights[0].dim() == 4 ? weights[0].size(0) : -1;
  for (size_t i = 0; i < weights.size(); ++i) {
    const int64_t expect_in = i == 0 ? in_channels : c;
    TORCH_CHECK(weights[i].dim() == 4 && weights[i].size(0) == c && weights[i].size(1) == expect_in &&
                    weights[i].size(2) == 3 && weights[i].size(3) == 3,
                op, ": weights[", i, "] must be [", c, ", ", expect_in, ", 3, 3], got ", weights[i].sizes());
    TORCH_CHECK(biases[i].dim() == 1 && biases[i].size(0) == c, op, ": biases[", i, "] must be [", c,
                "], got ", biases[i].sizes());
    TORCH_CHECK(
        weights[i].scalar_type() == like.scalar_type() && biases[i].scalar_type() == like.scalar_type(), op,
        ": weights and biases must have the input's dtype ", like.scalar_type(), ", got ",
        weights[i].scalar_type(), " / ", biases[i].scalar_type(), " at index ", i);
    TORCH_CHECK(weights[i].device() == like.device() && biases[i].device() == like.device(), op,
                ": weights and biases must be on the input's device ", like.device(), ", got ",
                weights[i].device(), " / ", biases[i].device(), " at index ", i);
  }
  // A convolution over no input channels, or into none, is not the official network (and ATen's
  // answer to the former has the wrong shape): refused on every backend and in the fake kernel.
  TORCH_CHECK(in_channels > 0 && c > 0, op, ": expected at least one input and one output channel, got ",
              in_channels, " input channels and weights[0] ", weights[0].sizes());
  return static_cast<int64_t>(weights.size() / 2);
}

inline void check_residual_trunk_args(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  const char* op = "vsr_fast::residual_trunk";
  TORCH_CHECK(x.defined(), op, ": x must be a tensor, got None");
  TORCH_CHECK(x.dim() == 4, op, ": expected x [N, C_in, H, W], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected a floating dtype, got ", x.scalar_type());
  check_trunk_weights(op, weights, biases, x.size(1), x);
}

}  // namespace vsr_fast
