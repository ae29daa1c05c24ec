// CPU kernel of vsr_fast::reconstruction_tail: BasicVSR / IconVSR's x4 reconstruction tail as one op.
//
// float32 with oneDNN, and bfloat16 on CPUs with bf16 hardware (onednn::usable): NHWC throughout. BasicVSR's
// 1x1 fusion is one or two GEMMs over the NHWC rows (no concatenation); each 3x3 convolution is a oneDNN
// convolution with prepacked weights (the trunk's cache, onednn_conv.h) and its bias + LeakyReLU fused as a
// post-op (in float32 on AVX2 + FMA, all but conv_last by Winograd instead: winograd_conv.h); LeakyReLU is
// elementwise, so it commutes with pixel_shuffle, which is then one strided copy per
// stage (NHWC [.., 4C] -> [.., 2, 2, C]); conv_last accumulates into the bilinear x4 base of the LR frame
// (oneDNN's sum post-op), so the residual add costs no pass of its own. Other dtypes: the shared ATen library
// path.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <optional>

#include "onednn_conv.h"
#include "vsr_fast/reconstruction_tail.h"
#include "winograd_conv.h"

namespace vsr_fast {
namespace {

at::Tensor tail_onednn(const at::Tensor& lr, const at::Tensor& feat,
                       const std::optional<at::Tensor>& feat_forward,
                       const std::optional<at::Tensor>& fusion_weight,
                       const std::optional<at::Tensor>& fusion_bias, at::TensorList weights,
                       at::TensorList biases) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  onednn::PackedWeights& cache = onednn::packed_weights();
  const bool use_winograd = winograd::enabled();
  at::Tensor x = feat.contiguous(cl);
  if (fusion_weight.has_value()) {
    std::optional<at::Tensor> forward;
    if (feat_forward.has_value()) forward = feat_forward->contiguous(cl);
    x = tail::fusion_nhwc(x, forward, *fusion_weight, *fusion_bias);
  }
  const int64_t n = x.size(0);
  for (size_t i = 0; i < 2; ++i) {
    const at::Tensor up = winograd::conv3x3_leaky_relu(
        x, weights[i], biases[i], tail::kSlope, use_winograd && winograd::suits(x, weights[i].size(0)));
    x = tail::shuffled_nhwc(up);
    auto [dst, src] = tail::shuffle_views(x, up);
    dst.copy_(src);
  }
  x = winograd::conv3x3_leaky_relu(x, weights[2], biases[2], tail::kSlope,
                                   use_winograd && winograd::suits(x, weights[2].size(0)));
  at::Tensor out = tail::bilinear_base(lr.contiguous(cl));
  onednn::conv_add_into(out, x, cache.get(weights[3], n, x.size(2), x.size(3)), biases[3], nullptr);
  return out;
}

at::Tensor reconstruction_tail_cpu(const at::Tensor& lr, const at::Tensor& feat,
                                   const std::optional<at::Tensor>& feat_forward,
                                   const std::optional<at::Tensor>& fusion_weight,
                                   const std::optional<at::Tensor>& fusion_bias, at::TensorList weights,
                                   at::TensorList biases) {
  check_reconstruction_tail_args(lr, feat, feat_forward, fusion_weight, fusion_bias, weights, biases);
  const auto format = lr.suggest_memory_format();
  if (lr.size(0) == 0 || lr.size(2) == 0 || lr.size(3) == 0) {
    return at::empty({lr.size(0), 3, 4 * lr.size(2), 4 * lr.size(3)}, lr.options().memory_format(format));
  }
  // Autograd is the Python layer's (backward by recomputation); below it, plain inference.
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  // oneDNN refuses convolutions without input or output channels; the library path takes them
  const int64_t tail_in = fusion_weight.has_value() ? fusion_weight->size(0) : feat.size(1);
  const bool onednn_ok = onednn::usable(feat, weights[0].size(0)) && tail_in > 0 && weights[2].size(0) > 0;
  const at::Tensor out =
      onednn_ok ? tail_onednn(lr, feat, feat_forward, fusion_weight, fusion_bias, weights, biases)
                : tail::library_path(lr, feat, feat_forward, fusion_weight, fusion_bias, weights, biases);
  return out.contiguous(format);
}

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CPU, m) { m.impl("reconstruction_tail", &vsr_fast::reconstruction_tail_cpu); }
