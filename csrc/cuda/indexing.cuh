// Element indexing that the CUDA kernels share: a 4-D tensor's strides in the kernel's index type,
// and whether 32-bit indices suffice for a launch (they save registers and integer work; 64-bit is
// the fallback). Private to csrc/cuda/.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <initializer_list>
#include <limits>

namespace vsr_fast {

template <typename index_t>
struct Strides4 {
  index_t s0, s1, s2, s3;
};

template <typename index_t>
Strides4<index_t> strides_of(const at::Tensor& t) {
  return {static_cast<index_t>(t.stride(0)), static_cast<index_t>(t.stride(1)),
          static_cast<index_t>(t.stride(2)), static_cast<index_t>(t.stride(3))};
}

// True when every element offset of every tensor (undefined ones skipped), and the thread count of a
// launch in blocks of block_threads, fit in int32.
inline bool fits_int32(std::initializer_list<const at::Tensor*> tensors, int64_t threads,
                       int64_t block_threads) {
  constexpr int64_t limit = std::numeric_limits<int32_t>::max();
  if (threads > limit - block_threads) return false;  // the last block's idx may pass `threads`
  for (const at::Tensor* t : tensors) {
    if (!t->defined()) continue;
    int64_t max_offset = 0;
    for (int64_t d = 0; d < t->dim(); ++d) max_offset += (t->size(d) - 1) * t->stride(d);
    if (max_offset >= limit || t->numel() >= limit) return false;
  }
  return true;
}

}  // namespace vsr_fast
