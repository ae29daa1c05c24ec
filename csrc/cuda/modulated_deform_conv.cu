// CUDA kernels of vsr_fast::modulated_deform_conv and vsr_fast::_modulated_deform_conv_backward, with
// the CPU kernels' structure: deformable im2col into a column buffer [pixels, C * K] (columns ordered
// deform group, tap, channel of the group; the sampling maths is the shared header's), then cuBLAS
// through at::addmm / at::mm straight into the output, chunk by chunk of output rows (column buffer
// bounded by kColumnBytes). Backward: the same im2col + GEMM for grad_weight, grad_columns by GEMM,
// then col2im: one thread per (pixel, deform group, tap) sums its grad_mask / grad_offset privately
// (deterministic) and scatters grad_x with atomics (non-deterministic order, reported to torch's
// deterministic mode). Corners outside the frame read as 0 and are never scattered into, as on CPU.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <initializer_list>
#include <limits>
#include <optional>
#include <tuple>

#include "vsr_fast/flow_warp.h"
#include "vsr_fast/modulated_deform_conv.h"

namespace vsr_fast {
namespace {

using namespace deform_conv_math;

constexpr int kThreads = 256;
// Column buffer bound: 256 MiB holds a whole 180x320 frame's fp32 columns at EDVR's C = 64, 3x3.
constexpr int64_t kColumnBytes = int64_t(256) << 20;

template <typename index_t>
struct Strides4 {
  index_t s0, s1, s2, s3;
};

template <typename index_t>
Strides4<index_t> strides_of(const at::Tensor& t) {
  return {static_cast<index_t>(t.stride(0)), static_cast<index_t>(t.stride(1)),
          static_cast<index_t>(t.stride(2)), static_cast<index_t>(t.stride(3))};
}

// Sizes the kernels need, in the index type.
template <typename index_t>
struct Dims {
  index_t h, w, wo, c, k, kw, groups, cg;
  index_t sh, sw, ph, pw, dh, dw;
};

template <typename index_t>
Dims<index_t> dims_of(const DeformConvGeometry& g) {
  auto i = [](int64_t v) { return static_cast<index_t>(v); };
  return {i(g.h),  i(g.w),  i(g.wo), i(g.c),  i(g.k),  i(g.kw), i(g.deform_groups), i(g.channels_per_group),
          i(g.sh), i(g.sw), i(g.ph), i(g.pw), i(g.dh), i(g.dw)};
}

// True when every element offset of every tensor, and the thread count, fits in int32.
bool fits_int32(std::initializer_list<const at::Tensor*> tensors, int64_t threads) {
  constexpr int64_t limit = std::numeric_limits<int32_t>::max();
  if (threads > limit - kThreads) return false;  // the last block's idx may pass `threads`
  for (const at::Tensor* t : tensors) {
    if (!t->defined()) continue;
    int64_t max_offset = 0;
    for (int64_t d = 0; d < t->dim(); ++d) max_offset += (t->size(d) - 1) * t->stride(d);
    if (max_offset >= limit || t->numel() >= limit) return false;
  }
  return true;
}

// One thread's sampling point: tap k of deform group dg for output (n, oy, ox), its corners as element
// offsets from x's (n, channel 0) plane origin (0 where outside: never read through), the weights and
// the mask.
template <typename acc_t, typename off_t, typename index_t>
struct ThreadSample {
  BilinearSample<acc_t> b;
  index_t corner[4];
  acc_t mask;
  index_t offset_index, mask_index;  // where this sample's offset (y) and mask entries live

  __device__ __forceinline__ ThreadSample(const Dims<index_t>& d, const off_t* __restrict__ offset,
                                          Strides4<index_t> os, const off_t* __restrict__ mask_ptr,
                                          Strides4<index_t> ms, Strides4<index_t> xs, index_t n, index_t oy,
                                          index_t ox, index_t dg, index_t k) {
    const index_t channel = dg * d.k + k;
    offset_index = n * os.s0 + 2 * channel * os.s1 + oy * os.s2 + ox * os.s3;
    mask_index = n * ms.s0 + channel * ms.s1 + oy * ms.s2 + ox * ms.s3;
    const index_t i = k / d.kw, j = k - (k / d.kw) * d.kw;
    b = bilinear_sample<acc_t>(
        static_cast<acc_t>(tap_base(oy, d.sh, d.ph, i, d.dh)),
        static_cast<acc_t>(tap_base(ox, d.sw, d.pw, j, d.dw)), static_cast<acc_t>(offset[offset_index]),
        static_cast<acc_t>(offset[offset_index + os.s1]), static_cast<acc_t>(d.h), static_cast<acc_t>(d.w));
    mask = static_cast<acc_t>(mask_ptr[mask_index]);
    const index_t y0 = static_cast<index_t>(b.y0), x0 = static_cast<index_t>(b.x0);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      corner[c] = b.valid[c] ? (y0 + (c >> 1)) * xs.s2 + (x0 + (c & 1)) * xs.s3 : index_t(0);
    }
  }
};

// One thread per (pixel of the chunk, deform group, tap), tap fastest: consecutive threads write
// consecutive channel blocks of a column row.
template <typename scalar_t, typename off_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    im2col_kernel(const scalar_t* __restrict__ x, Strides4<index_t> xs, const off_t* __restrict__ offset,
                  Strides4<index_t> os, const off_t* __restrict__ mask, Strides4<index_t> ms,
                  scalar_t* __restrict__ cols, Dims<index_t> d, index_t n, index_t row0, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t idx = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= total) return;
  const index_t k = idx % d.k, dg = (idx / d.k) % d.groups, l = idx / (d.k * d.groups);
  const index_t ox = l % d.wo, oy = row0 + l / d.wo;
  const ThreadSample<acc_t, off_t, index_t> s(d, offset, os, mask, ms, xs, n, oy, ox, dg, k);
  const scalar_t* in = x + n * xs.s0 + dg * d.cg * xs.s1;
  scalar_t* dst = cols + l * d.c * d.k + (dg * d.k + k) * d.cg;
  for (index_t c = 0; c < d.cg; ++c) {
    const scalar_t* plane = in + c * xs.s1;
    acc_t v = acc_t(0);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      // outside corners read as 0 with weight 0 (NaN for a NaN sample, which so becomes NaN)
      const acc_t value = s.b.valid[q] ? static_cast<acc_t>(plane[s.corner[q]]) : acc_t(0);
      v += s.b.weight[q] * value;
    }
    dst[c] = static_cast<scalar_t>(v * s.mask);
  }
}

template <typename scalar_t, typename off_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    col2im_kernel(const scalar_t* __restrict__ x, Strides4<index_t> xs, const off_t* __restrict__ offset,
                  Strides4<index_t> os, const off_t* __restrict__ mask, Strides4<index_t> ms,
                  const scalar_t* __restrict__ gcols, at::opmath_type<scalar_t>* __restrict__ grad_x,
                  off_t* __restrict__ grad_offset, Strides4<index_t> gos, off_t* __restrict__ grad_mask,
                  Strides4<index_t> gms, Dims<index_t> d, index_t n, index_t row0, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t idx = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= total) return;
  const index_t k = idx % d.k, dg = (idx / d.k) % d.groups, l = idx / (d.k * d.groups);
  const index_t ox = l % d.wo, oy = row0 + l / d.wo;
  const ThreadSample<acc_t, off_t, index_t> s(d, offset, os, mask, ms, xs, n, oy, ox, dg, k);
  const index_t plane0 = n * xs.s0 + dg * d.cg * xs.s1;
  const scalar_t* gc = gcols + l * d.c * d.k + (dg * d.k + k) * d.cg;
  acc_t sum_v = acc_t(0), sum_dy = acc_t(0), sum_dx = acc_t(0);
  for (index_t c = 0; c < d.cg; ++c) {
    const index_t plane = plane0 + c * xs.s1;
    const acc_t go = static_cast<acc_t>(gc[c]);
    acc_t v = acc_t(0), vy = acc_t(0), vx = acc_t(0);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const acc_t value = s.b.valid[q] ? static_cast<acc_t>(x[plane + s.corner[q]]) : acc_t(0);
      v += s.b.weight[q] * value;
      vy += s.b.dweight_dy[q] * value;
      vx += s.b.dweight_dx[q] * value;
      if (grad_x && s.b.valid[q]) atomicAdd(grad_x + plane + s.corner[q], s.mask * s.b.weight[q] * go);
    }
    sum_v += go * v;
    sum_dy += go * vy;
    sum_dx += go * vx;
  }
  if (grad_mask) {
    grad_mask[n * gms.s0 + (dg * d.k + k) * gms.s1 + oy * gms.s2 + ox * gms.s3] = static_cast<off_t>(sum_v);
  }
  if (grad_offset) {
    off_t* g = grad_offset + n * gos.s0 + 2 * (dg * d.k + k) * gos.s1 + oy * gos.s2 + ox * gos.s3;
    g[0] = static_cast<off_t>(s.mask * sum_dy);
    g[gos.s1] = static_cast<off_t>(s.mask * sum_dx);
  }
}

int64_t rows_per_chunk(const DeformConvGeometry& g, int64_t element_size) {
  const int64_t row_bytes = std::max<int64_t>(1, g.wo * g.k * g.c * element_size);
  return std::clamp<int64_t>(kColumnBytes / row_bytes, 1, g.ho);
}

at::Tensor weight_matrix(const at::Tensor& weight, int64_t groups) {
  const int64_t c_out = weight.size(0), c = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  return weight.reshape({c_out, groups, c / groups, kh, kw})
      .permute({1, 3, 4, 2, 0})
      .reshape({-1, c_out})
      .contiguous();
}

void copy_weight_matrix(at::Tensor& grad_weight, const at::Tensor& matrix, int64_t groups) {
  const int64_t c_out = grad_weight.size(0), c = grad_weight.size(1), kh = grad_weight.size(2),
                kw = grad_weight.size(3);
  grad_weight.view({c_out, groups, c / groups, kh, kw})
      .copy_(matrix.view({groups, kh, kw, c / groups, c_out}).permute({4, 0, 3, 1, 2}));
}

at::Tensor rows_matrix(const at::Tensor& t, int64_t n, int64_t row0, int64_t rows) {
  return t.select(0, n).narrow(1, row0, rows).permute({1, 2, 0}).reshape({-1, t.size(1)});
}

int64_t blocks_for(int64_t threads) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "vsr_fast::modulated_deform_conv: ", threads,
              " sampling threads for one row chunk exceed the CUDA grid");
  return blocks;
}

template <typename scalar_t, typename off_t>
void launch_im2col(const DeformConvGeometry& g, const at::Tensor& x, const at::Tensor& offset,
                   const at::Tensor& mask, const at::Tensor& cols, int64_t n, int64_t row0, int64_t rows,
                   cudaStream_t stream) {
  const int64_t total = rows * g.wo * g.deform_groups * g.k;
  auto launch = [&](auto index_zero) {
    using index_t = decltype(index_zero);
    im2col_kernel<scalar_t, off_t, index_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), strides_of<index_t>(x), offset.const_data_ptr<off_t>(),
        strides_of<index_t>(offset), mask.const_data_ptr<off_t>(), strides_of<index_t>(mask),
        cols.mutable_data_ptr<scalar_t>(), dims_of<index_t>(g), static_cast<index_t>(n),
        static_cast<index_t>(row0), static_cast<index_t>(total));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  fits_int32({&x, &offset, &mask, &cols}, total) ? launch(int32_t{0}) : launch(int64_t{0});
}

void check_cuda(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), op, ": CUDA kernel called with x on ", x.device());
}

at::Tensor modulated_deform_conv_cuda(const at::Tensor& x_in, const at::Tensor& offset,
                                      const at::Tensor& mask, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias_opt, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                      int64_t deform_groups) {
  const char* op = "vsr_fast::modulated_deform_conv";
  const DeformConvGeometry g = check_modulated_deform_conv_args(
      op, x_in, offset, mask, weight, bias_opt, stride, padding, dilation, groups, deform_groups);
  check_cuda(op, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor bias = bias_opt.has_value() ? *bias_opt : at::Tensor();
  const auto format = x_in.suggest_memory_format();
  at::Tensor out = at::empty({g.n, g.c_out, g.ho, g.wo}, x_in.options().memory_format(format));
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x_in.scalar_type(), "vsr_fast::modulated_deform_conv", [&] {
        with_flow_type<scalar_t>(x_in, offset, [&](auto offset_zero) {
          using off_t = decltype(offset_zero);
          const at::Tensor wm = weight_matrix(weight, g.deform_groups);
          const int64_t chunk = rows_per_chunk(g, x_in.element_size());
          const at::Tensor cols = at::empty({chunk * g.wo, g.k * g.c}, x_in.options());
          for (int64_t n = 0; n < g.n; ++n) {
            for (int64_t row0 = 0; row0 < g.ho; row0 += chunk) {
              const int64_t rows = std::min(chunk, g.ho - row0);
              const at::Tensor c = cols.narrow(0, 0, rows * g.wo);
              if (g.c > 0) launch_im2col<scalar_t, off_t>(g, x_in, offset, mask, c, n, row0, rows, stream);
              at::Tensor o = out.select(0, n).narrow(1, row0, rows).permute({1, 2, 0}).view({-1, g.c_out});
              if (bias.defined()) {
                at::addmm_out(o, bias.unsqueeze(0).expand({rows * g.wo, g.c_out}), c, wm);
              } else {
                at::mm_out(o, c, wm);
              }
            }
          }
        });
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> modulated_deform_conv_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias_opt, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t deform_groups,
    std::array<bool, 5> output_mask) {
  const char* op = "vsr_fast::_modulated_deform_conv_backward";
  const DeformConvGeometry g = check_modulated_deform_conv_args(
      op, x_in, offset, mask, weight, bias_opt, stride, padding, dilation, groups, deform_groups);
  check_cuda(op, x_in);
  check_modulated_deform_conv_grad_out(op, grad_out_in, x_in, g);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const bool need_x = output_mask[0], need_offset = output_mask[1], need_mask = output_mask[2],
             need_weight = output_mask[3], need_bias = output_mask[4] && has_bias;
  if (need_x)
    at::globalContext().alertNotDeterministic("vsr_fast::_modulated_deform_conv_backward (CUDA grad_x)");
  // grad_x is scattered with x's strides: make them dense
  const at::Tensor x =
      x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous(x_in.suggest_memory_format());
  at::Tensor grad_x = need_x ? at::empty_like(x) : x.new_empty({0});
  at::Tensor grad_offset = need_offset ? at::empty_like(offset) : offset.new_empty({0});
  at::Tensor grad_mask = need_mask ? at::empty_like(mask) : mask.new_empty({0});
  at::Tensor grad_weight = need_weight ? at::empty_like(weight) : weight.new_empty({0});
  at::Tensor grad_bias = need_bias ? at::empty_like(*bias_opt) : weight.new_empty({0});
  const bool need_columns_grad = need_x || need_offset || need_mask;
  const bool work = g.n > 0 && g.ho > 0 && g.wo > 0 && g.c_out > 0;
  if (need_bias) {
    if (work) {
      grad_bias.copy_(grad_out_in.sum({0, 2, 3}, false, at::toOpMathType(x.scalar_type())));
    } else {
      grad_bias.zero_();
    }
  }
  if (!work || g.c == 0 || !(need_columns_grad || need_weight)) {
    for (at::Tensor* t : {&grad_x, &grad_offset, &grad_mask, &grad_weight}) t->zero_();
    return {grad_x, grad_offset, grad_mask, grad_weight, grad_bias};
  }
  const at::Tensor grad_out = grad_out_in.contiguous(x.suggest_memory_format());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "vsr_fast::_modulated_deform_conv_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
        with_flow_type<scalar_t>(x, offset, [&](auto offset_zero) {
          using off_t = decltype(offset_zero);
          const at::Tensor wm = weight_matrix(weight, g.deform_groups);
          const int64_t chunk = rows_per_chunk(g, x.element_size());
          const at::Tensor cols = at::empty({chunk * g.wo, g.k * g.c}, x.options());
          at::Tensor gcols = at::empty({chunk * g.wo, g.k * g.c}, x.options());
          at::Tensor gwm =
              need_weight ? at::zeros({g.k * g.c, g.c_out}, x.options().dtype(acc_type)) : at::Tensor();
          at::Tensor gx_acc;
          if (need_x) {
            gx_acc = acc_type == x.scalar_type()
                         ? grad_x.zero_()
                         : at::empty_strided(x.sizes(), x.strides(), x.options().dtype(acc_type)).zero_();
          }
          for (int64_t n = 0; n < g.n; ++n) {
            for (int64_t row0 = 0; row0 < g.ho; row0 += chunk) {
              const int64_t rows = std::min(chunk, g.ho - row0);
              const at::Tensor gout = rows_matrix(grad_out, n, row0, rows);
              if (need_weight) {
                const at::Tensor c = cols.narrow(0, 0, rows * g.wo);
                launch_im2col<scalar_t, off_t>(g, x, offset, mask, c, n, row0, rows, stream);
                if (gwm.scalar_type() == x.scalar_type()) {
                  gwm.addmm_(c.t(), gout);
                } else {
                  gwm.add_(at::mm(c.t(), gout));
                }
              }
              if (!need_columns_grad) continue;
              at::Tensor gc = gcols.narrow(0, 0, rows * g.wo);
              at::mm_out(gc, gout, wm.t());
              const int64_t total = rows * g.wo * g.deform_groups * g.k;
              auto launch = [&](auto index_zero) {
                using index_t = decltype(index_zero);
                col2im_kernel<scalar_t, off_t, index_t><<<blocks_for(total), kThreads, 0, stream>>>(
                    x.const_data_ptr<scalar_t>(), strides_of<index_t>(x), offset.const_data_ptr<off_t>(),
                    strides_of<index_t>(offset), mask.const_data_ptr<off_t>(), strides_of<index_t>(mask),
                    gc.const_data_ptr<scalar_t>(), need_x ? gx_acc.mutable_data_ptr<acc_t>() : nullptr,
                    need_offset ? grad_offset.mutable_data_ptr<off_t>() : nullptr,
                    need_offset ? strides_of<index_t>(grad_offset) : Strides4<index_t>{0, 0, 0, 0},
                    need_mask ? grad_mask.mutable_data_ptr<off_t>() : nullptr,
                    need_mask ? strides_of<index_t>(grad_mask) : Strides4<index_t>{0, 0, 0, 0},
                    dims_of<index_t>(g), static_cast<index_t>(n), static_cast<index_t>(row0),
                    static_cast<index_t>(total));
                C10_CUDA_KERNEL_LAUNCH_CHECK();
              };
              fits_int32({&x, &offset, &mask, &gc, &gx_acc, &grad_offset, &grad_mask}, total)
                  ? launch(int32_t{0})
                  : launch(int64_t{0});
            }
          }
          if (need_x && !gx_acc.is_same(grad_x)) grad_x.copy_(gx_acc);
          if (need_weight) copy_weight_matrix(grad_weight, gwm, g.deform_groups);
        });
      });
  return {grad_x, grad_offset, grad_mask, grad_weight, grad_bias};
}

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CUDA, m) {
  m.impl("modulated_deform_conv", &vsr_fast::modulated_deform_conv_cuda);
  m.impl("_modulated_deform_conv_backward", &vsr_fast::modulated_deform_conv_backward_cuda);
}
