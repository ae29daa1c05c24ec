// oneDNN convolutions (3x3, stride 1, padding 1) with fused epilogues for the CPU kernels, through
// ATen's mkldnn pointwise-fusion ops, and the cache of weights reordered into oneDNN's layout, in the
// input's dtype (float32; bfloat16 where usable() takes it).
// Host-only, CPU-only: private to csrc/cpu/.
#pragma once

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/Utils.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace vsr_fast {
namespace onednn {

inline const std::vector<int64_t> kOnes = {1, 1};

// ---- weights reordered for oneDNN, cached per (weight tensor, input shape) ----------------------
//
// A packed weight is handed out again only while the weight's bytes still equal the copy it was
// packed from (a memcmp per call): sound however the weight was written. The version counter is
// not: fused optimizers (SGD/Adam/AdamW(fused=True)) and writes through `.data` or numpy views do
// not bump it, and inference tensors have none (docs/design.md, "The CPU weight cache": it saves
// ~84 us of reorder per 64x64x3x3 weight, ~4-6 ms per c64b30 trunk call; benchmarks/
// bench_residual_trunk.py::test_trunk_weight_cache times it against VSR_FAST_CPU_WEIGHT_CACHE=0).
//
// Entries die with their weight: each holds it weakly and is dropped once it is freed (checked on
// every miss and every kPruneEvery hits), and all entries together stay under kMaxBytes (the least
// recently used go first), so fresh weights per call do not pile up packed copies.

struct PackKey {
  const c10::TensorImpl* impl;
  int64_t kind;  // which packing: kOneDnnReorder, or another packer's own number (Winograd's)
  int64_t n, h, w;
  int64_t in_begin, in_count;  // the slice of input channels packed (a split convolution's half)
  bool operator==(const PackKey& o) const {
    return impl == o.impl && kind == o.kind && n == o.n && h == o.h && w == o.w && in_begin == o.in_begin &&
           in_count == o.in_count;
  }
};

struct PackKeyHash {
  size_t operator()(const PackKey& k) const {
    return std::hash<const void*>()(k.impl) ^
           (std::hash<int64_t>()((((k.n * 1000003 + k.h) * 1009 + k.w) * 31 + k.in_begin) * 7 + k.kind) << 1);
  }
};

struct PackEntry {
  // Held weakly, only to notice that the weight is gone. While an entry holds it, the TensorImpl's
  // memory (and so its address, the key) cannot be reused by another tensor.
  c10::weak_intrusive_ptr<c10::TensorImpl> source;
  at::Tensor packed_from;  // dense copy of the weight slice the packed weight was made from
  at::Tensor packed;
  size_t bytes;
  uint64_t last_use;
};

// Whether `slice` (a weight, or a narrow(1) of one) holds exactly the bytes of the dense `copy`.
// Bitwise on purpose: equal bytes give the same packed weight (NaN patterns included).
inline bool same_bytes(const at::Tensor& slice, const at::Tensor& copy) {
  if (slice.sizes() != copy.sizes() || slice.scalar_type() != copy.scalar_type()) return false;
  const auto* a = static_cast<const char*>(slice.const_data_ptr());
  const auto* b = static_cast<const char*>(copy.const_data_ptr());
  const size_t elem = slice.element_size();
  if (slice.is_contiguous()) return std::memcmp(a, b, slice.numel() * elem) == 0;
  // an input-channel slice of a contiguous weight: one contiguous run per output channel
  const int64_t run = slice.size(1) * slice.size(2) * slice.size(3);
  if (slice.stride(3) == 1 && slice.stride(2) == slice.size(3) &&
      slice.stride(1) == slice.size(2) * slice.size(3)) {
    for (int64_t o = 0; o < slice.size(0); ++o) {
      if (std::memcmp(a + o * slice.stride(0) * elem, b + o * run * elem, run * elem) != 0) return false;
    }
    return true;
  }
  const at::Tensor dense = slice.contiguous();
  return std::memcmp(dense.const_data_ptr(), b, dense.numel() * elem) == 0;
}

class PackedWeights {
 public:
  // ~5 BasicVSR models: one holds ~100 MB of entries in float32 with the Winograd convolutions (each
  // 64x64 3x3 weight: its copy, 147 KB, and 36 transformed points, 590 KB), ~40 MB with oneDNN's
  static constexpr size_t kMaxBytes = size_t{512} << 20;
  static constexpr uint64_t kPruneEvery = 256;

  static constexpr int64_t kOneDnnReorder = 0;

  // `weight` reordered for inputs [n, in_count, h, w]; in_count < 0: all of its input channels,
  // else the slice [in_begin, in_begin + in_count) of them.
  at::Tensor get(const at::Tensor& weight, int64_t n, int64_t h, int64_t w, int64_t in_begin = 0,
                 int64_t in_count = -1) {
    if (in_count < 0) in_count = weight.size(1) - in_begin;
    return get_packed(weight,
                      PackKey{weight.unsafeGetTensorImpl(), kOneDnnReorder, n, h, w, in_begin, in_count},
                      [&](const at::Tensor& dense) { return reorder(dense, n, in_count, h, w); });
  }

  // The whole `weight` packed by `pack` (a function of its dense copy), cached under `kind`: for
  // packings other than oneDNN's that need no input shape (winograd_conv.h).
  template <typename Pack>
  at::Tensor get(const at::Tensor& weight, int64_t kind, Pack&& pack) {
    return get_packed(weight, PackKey{weight.unsafeGetTensorImpl(), kind, 0, 0, 0, 0, weight.size(1)}, pack);
  }

  // For tests (vsr_fast::_cpu_weight_cache_stats): entries and bytes held now (after dropping
  // those of freed weights), and the bound on the bytes.
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    drop_dead();
    return {static_cast<int64_t>(entries_.size()), static_cast<int64_t>(bytes_),
            static_cast<int64_t>(kMaxBytes)};
  }

 private:
  template <typename Pack>
  at::Tensor get_packed(const at::Tensor& weight, const PackKey& key, Pack&& pack) {
    const at::Tensor slice = weight.detach().narrow(1, key.in_begin, key.in_count);
    // VSR_FAST_CPU_WEIGHT_CACHE=0: pack on every call (read per call, so a benchmark can time
    // both in one process: benchmarks/bench_residual_trunk.py::test_trunk_weight_cache)
    const char* setting = std::getenv("VSR_FAST_CPU_WEIGHT_CACHE");
    if (setting != nullptr && std::string(setting) == "0") return pack(slice.contiguous());
    at::Tensor packed_from, packed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (++clock_ % kPruneEvery == 0) drop_dead();
      auto it = entries_.find(key);
      if (it != entries_.end()) {
        it->second.last_use = clock_;
        packed_from = it->second.packed_from;
        packed = it->second.packed;
      }
    }
    // compared outside the lock: other threads' calls need not wait for this one's memcmp
    if (packed.defined() && same_bytes(slice, packed_from)) return packed;

    // Packed from a private copy, so the entry describes exactly the bytes it was made from. (The
    // reorder also misreads strided weights, found by tests/test_residual_trunk.py: the copy is dense.)
    packed_from = slice.clone(at::MemoryFormat::Contiguous);
    packed = pack(packed_from);
    const size_t bytes = packed_from.nbytes() + packed.nbytes();

    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      bytes_ -= it->second.bytes;
      entries_.erase(it);
    }
    drop_dead();
    while (!entries_.empty() && bytes_ + bytes > kMaxBytes) drop_least_recent();
    entries_.emplace(key, PackEntry{c10::weak_intrusive_ptr<c10::TensorImpl>(weight.getIntrusivePtr()),
                                    packed_from, packed, bytes, clock_});
    bytes_ += bytes;
    return packed;
  }

  static at::Tensor reorder(const at::Tensor& dense, int64_t n, int64_t in_count, int64_t h, int64_t w) {
    static const c10::OperatorHandle& op =
        c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_convolution_weight", "");
    std::vector<c10::IValue> stack{dense, kOnes,      kOnes,
                                   kOnes, int64_t{1}, std::vector<int64_t>{n, in_count, h, w}};
    op.callBoxed(&stack);
    return stack[0].toTensor();
  }

  void drop_dead() {
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->second.source.expired()) {
        bytes_ -= it->second.bytes;
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void drop_least_recent() {
    auto oldest = entries_.begin();
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->second.last_use < oldest->second.last_use) oldest = it;
    }
    bytes_ -= oldest->second.bytes;
    entries_.erase(oldest);
  }

  std::mutex mutex_;
  std::unordered_map<PackKey, PackEntry, PackKeyHash> entries_;
  size_t bytes_ = 0;
  uint64_t clock_ = 0;
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

// Whether this CPU has bf16 dot-product hardware (AVX512-BF16 or AMX-BF16): there oneDNN's bf16
// convolutions run several times faster than float32. Without it oneDNN either refuses bf16 (AVX2:
// "bf16 path needs the cpu support ...") or emulates it on AVX-512, slower than float32.
inline bool native_bf16() {
  static const bool native = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    auto has = [&](const char* name) {
      const auto it = caps.find(name);
      return it != caps.end() && it->second.isBool() && it->second.toBool();
    };
    return has("avx512_bf16") || has("amx_bf16");
  }();
  return native;
}

// A convolution of x into out_channels channels goes through oneDNN: float32, and bfloat16 on a CPU
// with native bf16 (VSR_FAST_CPU_BF16=onednn forces it elsewhere, for tests: read per call), with
// oneDNN present, unless VSR_FAST_CPU_TRUNK=aten asks for the plain ATen path. float16 stays on ATen
// (which uses oneDNN itself where the CPU has fp16 hardware). Not without input or output channels:
// oneDNN cannot describe those convolutions, ATen's give the bias (or an empty output).
inline bool usable(const at::Tensor& x, int64_t out_channels) {
  static const bool disabled = [] {
    const char* v = std::getenv("VSR_FAST_CPU_TRUNK");
    return v != nullptr && std::string(v) == "aten";
  }();
  auto dtype_ok = [&] {
    if (x.scalar_type() == at::kFloat) return true;
    if (x.scalar_type() != at::kBFloat16) return false;
    const char* forced = std::getenv("VSR_FAST_CPU_BF16");
    return native_bf16() || (forced != nullptr && std::string(forced) == "onednn");
  };
  return !disabled && x.size(1) > 0 && out_channels > 0 && dtype_ok() && at::hasMKLDNN() &&
         at::globalContext().userEnabledMkldnn();
}

}  // namespace onednn
}  // namespace vsr_fast
