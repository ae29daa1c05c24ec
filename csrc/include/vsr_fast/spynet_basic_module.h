// What the CPU and CUDA kernels of vsr_fast::spynet_basic_module share: the argument checks (so both
// reject the same inputs in the same words; vsr_fast/ops/_checks.py repeats them for the fake kernel)
// and the library path through ATen operators, which is CUDA's path (cuDNN convolutions) and the CPU's
// for dtypes without the oneDNN path. Host-only.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/relu.h>
#include <c10/util/Exception.h>

#include <vector>

namespace vsr_fast {
namespace spynet {

// One pyramid level of SPyNet: five 7x7 convolutions (8 -> 32 -> 64 -> 32 -> 16 -> 2 in the official
// network), stride 1, padding 3, a ReLU after each but the last.
constexpr size_t kConvs = 5;
constexpr int64_t kKernel = 7;
constexpr int64_t kPadding = 3;

}  // namespace spynet

inline void check_spynet_basic_module_args(const at::Tensor& x, at::TensorList weights,
                                           at::TensorList biases) {
  const char* op = "vsr_fast::spynet_basic_module";
  TORCH_CHECK(x.dim() == 4, op, ": expected x [N, C_in, H, W], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected a floating dtype, got ", x.scalar_type());
  TORCH_CHECK(weights.size() == spynet::kConvs && biases.size() == spynet::kConvs, op,
              ": expected 5 weights and 5 biases (the five 7x7 convolutions), got ", weights.size(), " and ",
              biases.size());
  int64_t channels = x.size(1);
  for (size_t i = 0; i < spynet::kConvs; ++i) {
    const at::Tensor& w = weights[i];
    const at::Tensor& b = biases[i];
    TORCH_CHECK(
        w.dim() == 4 && w.size(1) == channels && w.size(2) == spynet::kKernel && w.size(3) == spynet::kKernel,
        op, ": weights[", i, "] must be [C_out, ", channels, ", 7, 7], got ", w.sizes());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0), op, ": biases[", i, "] must be [", w.size(0),
                "], got ", b.sizes());
    TORCH_CHECK(w.scalar_type() == x.scalar_type() && b.scalar_type() == x.scalar_type(), op,
                ": weights and biases must have x's dtype ", x.scalar_type(), ", got ", w.scalar_type(),
                " / ", b.scalar_type(), " at index ", i);
    TORCH_CHECK(w.device() == x.device() && b.device() == x.device(), op,
                ": weights and biases must be on x's device ", x.device(), ", got ", w.device(), " / ",
                b.device(), " at index ", i);
    // A convolution over no channels, or into none, is not SPyNet (and oneDNN cannot describe it)
    TORCH_CHECK(channels > 0 && w.size(0) > 0, op, ": weights[", i,
                "] must have input and output channels, got ", w.sizes());
    channels = w.size(0);
  }
}

namespace spynet {

// The five convolutions through ATen operators in channels_last (cuDNN on CUDA), each ReLU in place.
// Autograd must already be excluded by the caller.
inline at::Tensor library_path(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const std::vector<int64_t> ones = {1, 1};
  const std::vector<int64_t> padding = {kPadding, kPadding};
  at::Tensor y = x.contiguous(cl);
  for (size_t i = 0; i < kConvs; ++i) {
    y = at::convolution(y, weights[i].contiguous(cl), biases[i], ones, padding, ones, false, {0, 0}, 1)
            .contiguous(cl);
    if (i + 1 < kConvs) at::relu_(y);
  }
  return y;
}

}  // namespace spynet
}  // namespace vsr_fast
