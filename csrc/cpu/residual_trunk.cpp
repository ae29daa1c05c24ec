// CPU kernel of vsr_fast::residual_trunk (and the trunk body propagation_step runs, cpu_kernels.h).
//
// float32 with oneDNN available, and bfloat16 on CPUs with bf16 hardware (onednn::usable; the same
// code in the other dtype): NHWC oneDNN convolutions through ATen's mkldnn pointwise-fusion ops, with the
// epilogues fused into each convolution (bias + LeakyReLU, bias + ReLU, bias + residual add), weights
// reordered once into oneDNN's blocked layout and cached, and two feature buffers reused for the whole trunk:
// the residual sum is accumulated in place and the ReLU branch is written into a buffer that is reused block
// after block (no allocation per layer). In float32 on CPUs with AVX2 + FMA each convolution is instead a
// Winograd F(4x4, 3x3) convolution with the same epilogues (winograd_conv.h: ~2x a oneDNN convolution there,
// which runs near the FMA peak); VSR_FAST_CPU_CONV=onednn keeps oneDNN's. Other dtypes (float16, bfloat16
// without bf16 hardware, float64; or no oneDNN): the same loop with at::convolution in channels_last and
// in-place epilogues.
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/leaky_relu.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <vector>

#include "cpu_kernels.h"
#include "onednn_conv.h"
#include "vsr_fast/residual_trunk.h"
#include "winograd_conv.h"

namespace vsr_fast {
namespace {

// The trunk over an NHWC input; returns an NHWC [N, C, H, W] tensor. Each convolution runs by
// Winograd where winograd::usable (float32 on AVX2 + FMA), else through oneDNN.
at::Tensor trunk_onednn(const at::Tensor& input, at::TensorList weights, at::TensorList biases) {
  const int64_t n = input.size(0), h = input.size(2), w = input.size(3);
  using onednn::conv_add_into;
  using winograd::Epilogue;
  onednn::PackedWeights& cache = onednn::packed_weights();
  const bool fast_3x3 = winograd::usable(input, weights[0].size(0));
  at::Tensor feat = winograd::conv3x3_leaky_relu(input, weights[0], biases[0], 0.1, fast_3x3);
  at::Tensor branch = at::empty_like(feat);
  for (size_t k = 1; k + 1 < weights.size(); k += 2) {
    if (fast_3x3) {
      winograd::conv3x3(feat, winograd::packed_weight(weights[k]), biases[k].contiguous(), branch,
                        Epilogue::kRelu);
      winograd::conv3x3(branch, winograd::packed_weight(weights[k + 1]), biases[k + 1].contiguous(), feat,
                        Epilogue::kAccumulate);
      continue;
    }
    // relu(conv1(feat) + b1) into the reused buffer: the binary form accumulates, so start it at 0
    branch.zero_();
    conv_add_into(branch, feat, cache.get(weights[k], n, h, w), biases[k], "relu");
    conv_add_into(feat, branch, cache.get(weights[k + 1], n, h, w), biases[k + 1], nullptr);
  }
  return feat;
}

at::Tensor trunk_aten(const at::Tensor& input, at::TensorList weights, at::TensorList biases) {
  auto conv = [](const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
    return at::convolution(x, weight, bias, onednn::kOnes, onednn::kOnes, onednn::kOnes, false, {0, 0}, 1);
  };
  at::Tensor feat = conv(input, weights[0], biases[0]);
  at::leaky_relu_(feat, 0.1);
  for (size_t k = 1; k + 1 < weights.size(); k += 2) {
    feat.add_(conv(conv(feat, weights[k], biases[k]).relu_(), weights[k + 1], biases[k + 1]));
  }
  return feat;
}

at::Tensor residual_trunk_cpu(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  check_residual_trunk_args(x, weights, biases);
  const int64_t channels = weights[0].size(0);
  // The output has the memory format the op promises: that of its input.
  const auto format = x.suggest_memory_format();
  if (x.size(0) == 0 || x.size(2) == 0 || x.size(3) == 0) {
    return at::empty({x.size(0), channels, x.size(2), x.size(3)}, x.options().memory_format(format));
  }
  // Autograd is the Python layer's (backward by recomputation); below it, plain inference.
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  return residual_trunk_cpu_nhwc(x.contiguous(at::MemoryFormat::ChannelsLast), weights, biases)
      .contiguous(format);
}

}  // namespace

at::Tensor residual_trunk_cpu_nhwc(const at::Tensor& input_nhwc, at::TensorList weights,
                                   at::TensorList biases) {
  // Weights and biases may be non-contiguous views; oneDNN's reorder and ATen both accept that.
  return onednn::usable(input_nhwc, weights[0].size(0)) ? trunk_onednn(input_nhwc, weights, biases)
                                                        : trunk_aten(input_nhwc, weights, biases);
}

namespace {

std::vector<int64_t> cpu_weight_cache_stats() { return onednn::packed_weights().stats(); }

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CPU, m) { m.impl("residual_trunk", &vsr_fast::residual_trunk_cpu); }
// no tensor arguments: one kernel for every dispatch key
TORCH_LIBRARY_IMPL(vsr_fast, CompositeImplicitAutograd, m) {
  m.impl("_cpu_weight_cache_stats", &vsr_fast::cpu_weight_cache_stats);
}
