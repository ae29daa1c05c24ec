// CPU kernels of vsr_fast::residual_trunk and vsr_fast::propagation_step.
//
// float32 with oneDNN available: NHWC oneDNN convolutions through ATen's mkldnn pointwise-fusion
// ops, with the epilogues fused into each convolution (bias + LeakyReLU, bias + ReLU, bias +
// residual add), weights reordered once into oneDNN's blocked layout and cached, and two feature
// buffers reused for the whole trunk: the residual sum is accumulated in place and the ReLU branch
// is written into a buffer that is reused block after block (no allocation per layer).
// Other dtypes (or no oneDNN): the same loop with at::convolution in channels_last and in-place
// epilogues.
//
// propagation_step writes lr, the feature and the warped state straight into the channel slices of
// the trunk's NHWC input buffer (the warp is flow_warp's CPU kernel writing into that slice).
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/leaky_relu.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "cpu_kernels.h"
#include "onednn_conv.h"
#include "vsr_fast/residual_trunk.h"

namespace vsr_fast {
namespace {

// The trunk over an NHWC input; returns an NHWC [N, C, H, W] tensor.
at::Tensor trunk_onednn(const at::Tensor& input, at::TensorList weights, at::TensorList biases) {
  const int64_t n = input.size(0), h = input.size(2), w = input.size(3);
  using onednn::conv_add_into;
  using onednn::conv_unary;
  onednn::PackedWeights& cache = onednn::packed_weights();
  c10::List<std::optional<at::Scalar>> slope;
  slope.push_back(at::Scalar(0.1));
  at::Tensor feat = conv_unary(input, cache.get(weights[0], n, h, w), biases[0], "leaky_relu", slope);
  at::Tensor branch = at::empty_like(feat);
  for (size_t k = 1; k + 1 < weights.size(); k += 2) {
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

at::Tensor run_trunk(const at::Tensor& input_nhwc, at::TensorList weights, at::TensorList biases) {
  // Weights and biases may be non-contiguous views; oneDNN's reorder and ATen both accept that.
  return onednn::usable(input_nhwc) ? trunk_onednn(input_nhwc, weights, biases)
                                   : trunk_aten(input_nhwc, weights, biases);
}

// The result in the memory format the op promises: that of its first input.
at::Tensor in_format_of(const at::Tensor& result, const at::Tensor& like) {
  return result.contiguous(like.suggest_memory_format());
}

at::Tensor empty_output(const at::Tensor& like, int64_t channels) {
  return at::empty({like.size(0), channels, like.size(2), like.size(3)},
                   like.options().memory_format(like.suggest_memory_format()));
}

at::Tensor residual_trunk_cpu(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  check_residual_trunk_args(x, weights, biases);
  const int64_t channels = weights[0].size(0);
  if (x.size(0) == 0 || x.size(2) == 0 || x.size(3) == 0) return empty_output(x, channels);
  // Autograd is the Python layer's (backward by recomputation); below it, plain inference.
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  const at::Tensor input = x.contiguous(at::MemoryFormat::ChannelsLast);
  return in_format_of(run_trunk(input, weights, biases), x);
}

at::Tensor propagation_step_cpu(const at::Tensor& lr, const std::optional<at::Tensor>& feature,
                                const std::optional<at::Tensor>& state,
                                const std::optional<at::Tensor>& flow, at::TensorList weights,
                                at::TensorList biases) {
  const int64_t channels = check_propagation_step_args(lr, feature, state, flow, weights, biases);
  if (lr.size(0) == 0 || lr.size(2) == 0 || lr.size(3) == 0) return empty_output(lr, channels);
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  const at::Tensor input = assemble_step_input(
      lr, feature, state, flow, channels, [](const at::Tensor& s, const at::Tensor& f, const at::Tensor& out) {
        flow_warp_cpu_into(s, f, out, /*interpolation=*/0, /*padding_mode=*/0, /*align_corners=*/true);
      });
  return in_format_of(run_trunk(input, weights, biases), lr);
}

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CPU, m) {
  m.impl("residual_trunk", &vsr_fast::residual_trunk_cpu);
  m.impl("propagation_step", &vsr_fast::propagation_step_cpu);
}
