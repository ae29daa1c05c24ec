// CPU kernel of vsr_fast::keyframe_fusion: conv(cat[state, refill]) as two convolutions over the
// weight's input-channel halves, the second accumulated in place into the first's output (oneDNN
// binary post-op), so the 2C-channel concatenation is never formed.
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "onednn_conv.h"
#include "vsr_fast/keyframe_fusion.h"

namespace vsr_fast {
namespace {

at::Tensor keyframe_fusion_cpu(const at::Tensor& state, const at::Tensor& refill, const at::Tensor& weight,
                               const at::Tensor& bias) {
  check_keyframe_fusion_args(state, refill, weight, bias);
  const auto format = state.suggest_memory_format();
  if (state.size(0) == 0 || state.size(2) == 0 || state.size(3) == 0) {
    return at::empty({state.size(0), weight.size(0), state.size(2), state.size(3)},
                     state.options().memory_format(format));
  }
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  // (a half without channels: oneDNN cannot describe its convolution)
  if (!onednn::usable(state, weight.size(0)) || refill.size(1) == 0) {
    return at::convolution(at::cat({state, refill}, 1), weight, bias, onednn::kOnes, onednn::kOnes,
                           onednn::kOnes, false, {0, 0}, 1)
        .contiguous(format);
  }
  const int64_t n = state.size(0), h = state.size(2), w = state.size(3), cs = state.size(1);
  onednn::PackedWeights& cache = onednn::packed_weights();
  const at::Tensor s = state.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor r = refill.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = onednn::conv_unary(s, cache.get(weight, n, h, w, 0, cs), bias, "none");
  onednn::conv_add_into(out, r, cache.get(weight, n, h, w, cs, refill.size(1)), at::Tensor(), nullptr);
  return out.contiguous(format);
}

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CPU, m) { m.impl("keyframe_fusion", &vsr_fast::keyframe_fusion_cpu); }
