// CPU kernel of vsr_fast::spynet_basic_module: one SPyNet pyramid level (five 7x7 convolutions with a
// ReLU after each but the last) as one op.
//
// float32 with oneDNN: the five convolutions run on one opaque oneDNN tensor (ATen's mkldnn layout), so
// the activations stay in whatever layout oneDNN picks for these convolutions on this CPU and are
// converted only twice, at entry and exit. On the AVX2 machine this was written on, oneDNN picks its
// blocked nChw8c kernels, which ran the 64x128 level ~20% faster (CPU time, one thread) than its NHWC
// kernels with prepacked weights and fused bias + ReLU (onednn_conv.h's path, which ATen's reorder API
// can only pack for): benchmarks/results/spynet_basic_module_cpu_2core.md. ATen's fused-post-op
// convolution does not take opaque tensors, so each ReLU is oneDNN's in-place eltwise pass; the
// weights are reordered per call inside oneDNN (packing them ahead measured no difference, as the
// blocked kernels re-reorder the packed format). Other dtypes: the shared ATen library path.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mkldnn_convolution.h>
#include <ATen/ops/relu.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <vector>

#include "onednn_conv.h"
#include "vsr_fast/spynet_basic_module.h"

namespace vsr_fast {
namespace {

at::Tensor basic_module_onednn(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  const std::vector<int64_t> ones = {1, 1};
  const std::vector<int64_t> padding = {spynet::kPadding, spynet::kPadding};
  at::Tensor y = x.contiguous().to_mkldnn();
  for (size_t i = 0; i < spynet::kConvs; ++i) {
    y = at::mkldnn_convolution(y, weights[i].contiguous(), biases[i].contiguous(), padding, ones, ones, 1);
    if (i + 1 < spynet::kConvs) at::relu_(y);
  }
  return y.to_dense();
}

at::Tensor spynet_basic_module_cpu(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  check_spynet_basic_module_args(x, weights, biases);
  const auto format = x.suggest_memory_format();
  if (x.size(0) == 0 || x.size(2) == 0 || x.size(3) == 0) {
    return at::empty({x.size(0), weights[spynet::kConvs - 1].size(0), x.size(2), x.size(3)},
                     x.options().memory_format(format));
  }
  // Autograd is the Python layer's (backward by recomputation); below it, plain inference.
  c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset);
  const at::Tensor out = onednn::usable(x, weights[0].size(0)) ? basic_module_onednn(x, weights, biases)
                                                               : spynet::library_path(x, weights, biases);
  return out.contiguous(format);
}

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CPU, m) { m.impl("spynet_basic_module", &vsr_fast::spynet_basic_module_cpu); }
