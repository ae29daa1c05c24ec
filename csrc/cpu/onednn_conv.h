// oneDNN convolutions (3x3, stride 1, padding 1) with fused epilogues for the CPU kernels, through
// ATen's mkldnn pointwise-fusion ops, and the cache of weights reordered into oneDNN's layout.
// Host-only, CPU-only: private to csrc/cpu/.
#pragma once

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace vsr_fast {
namespace onednn {

inline const std::vector<int64_t> kOnes = {1, 1};

// ---- weights reordered for oneDNN, cached per (weight tensor, version, input shape) -------------

struct PackKey {
  const c10::TensorImpl* impl;
  int64_t n, h, w;
  int64_t in_begin, in_count;  // the slice of input channels packed (a split convolution's half)
  bool operator==(const PackKey& o) const {
    return impl == o.impl && n == o.n && h == o.h && w == o.w && in_begin == o.in_begin &&
           in_count == o.in_count;
  }
};

struct PackKeyHash {
  size_t operator()(const PackKey& k) const {
    return std::hash<const void*>()(k.impl) ^
           (std::hash<int64_t>()(((k.n * 1000003 + k.h) * 1009 + k.w) * 31 + k.in_begin) << 1);
  }
};

struct PackEntry {
  // The weight itself is held weakly: once it is freed the entry can never match again (its address
  // may be reused by another tensor, so the pointer alone is not an identity).
  c10::weak_intrusive_ptr<c10::TensorImpl> source;
  uint32_t version;
  const void* data;
  at::Tensor packed;
};

class PackedWeights {
 public:
  // `weight` reordered for inputs [n, in_count, h, w]; in_count < 0: all of its input channels,
  // else the slice [in_begin, in_begin + in_count) of them.
  at::Tensor get(const at::Tensor& weight, int64_t n, int64_t h, int64_t w, int64_t in_begin = 0,
                 int64_t in_count = -1) {
    if (in_count < 0) in_count = weight.size(1) - in_begin;
    const PackKey key{weight.unsafeGetTensorImpl(), n, h, w, in_begin, in_count};
    const uint32_t version = weight.unsafeGetTensorImpl()->version_counter().current_version();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = entries_.find(key);
      if (it != entries_.end()) {
        const PackEntry& e = it->second;
        auto alive = e.source.lock();
        if (alive && alive.get() == key.impl && e.version == version && e.data == weight.data_ptr()) {
          return e.packed;
        }
        entries_.erase(it);
      }
    }
    static const c10::OperatorHandle& reorder =
        c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_convolution_weight", "");
    // The reorder misreads strided weights (found by tests/test_residual_trunk.py): pack a dense
    // copy, but keep the entry keyed to the caller's tensor.
    std::vector<c10::IValue> stack{weight.detach().narrow(1, in_begin, in_count).contiguous(),
                                   kOnes,
                                   kOnes,
                                   kOnes,
                                   int64_t{1},
                                   std::vector<int64_t>{n, in_count, h, w}};
    reorder.callBoxed(&stack);
    at::Tensor packed = stack[0].toTensor();
    std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() >= kMaxEntries) prune();
    entries_.insert_or_assign(
        key, PackEntry{c10::weak_intrusive_ptr<c10::TensorImpl>(weight.getIntrusivePtr()), version,
                       weight.data_ptr(), packed});
    return packed;
  }

 private:
  static constexpr size_t kMaxEntries = 1024;  // ~8 trunks of 61 convolutions at two frame sizes

  void prune() {
    for (auto it = entries_.begin(); it != entries_.end();) {
      it = it->second.source.expired() ? entries_.erase(it) : std::next(it);
    }
    if (entries_.size() >= kMaxEntries) entries_.clear();
  }

  std::mutex mutex_;
  std::unordered_map<PackKey, PackEntry, PackKeyHash> entries_;
};

inline PackedWeights& packed_weights() {
  static PackedWeights cache;
  return cache;
}

// ---- oneDNN convolutions with fused epilogues ---------------------------------------------------

// out = unary(conv(x) + bias); unary "leaky_relu" (slope in `scalars`), "relu" or "none".
inline at::Tensor conv_unary(
    const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias, const char* unary,
    c10::List<std::optional<at::Scalar>> scalars = c10::List<std::optional<at::Scalar>>()) {
  static const c10::OperatorHandle& op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "");
  std::vector<c10::IValue> stack{x,
                                 packed,
                                 bias.contiguous(),
                                 kOnes,
                                 kOnes,
                                 kOnes,
                                 int64_t{1},
                                 std::string(unary),
                                 std::move(scalars),
                                 std::string("")};
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// acc = unary(conv(x) + bias + acc), in place; unary "relu" or none (nullptr).
// bias may be undefined (none).
inline void conv_add_into(const at::Tensor& acc, const at::Tensor& x, const at::Tensor& packed,
                          const at::Tensor& bias, const char* unary) {
  static const c10::OperatorHandle& op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise_", "binary");
  const c10::IValue bias_value = bias.defined() ? c10::IValue(bias.contiguous()) : c10::IValue();
  std::vector<c10::IValue> stack{acc,
                                 x,
                                 packed,
                                 bias_value,
                                 kOnes,
                                 kOnes,
                                 kOnes,
                                 int64_t{1},
                                 std::string("add"),
                                 at::Scalar(1.0),
                                 unary ? c10::IValue(std::string(unary)) : c10::IValue(),
                                 c10::List<std::optional<at::Scalar>>(),
                                 unary ? c10::IValue(std::string("")) : c10::IValue()};
  op.callBoxed(&stack);
}

// float32 with oneDNN present, unless VSR_FAST_CPU_TRUNK=aten asks for the plain ATen path.
inline bool usable(const at::Tensor& x) {
  static const bool disabled = [] {
    const char* v = std::getenv("VSR_FAST_CPU_TRUNK");
    return v != nullptr && std::string(v) == "aten";
  }();
  return !disabled && x.scalar_type() == at::kFloat && at::hasMKLDNN() &&
         at::globalContext().userEnabledMkldnn();
}

}  // namespace onednn
}  // namespace vsr_fast
