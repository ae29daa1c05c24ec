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
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <tuple>

#include "indexing.cuh"
#include "vsr_fast/flow_warp.h"
#include "vsr_fast/modulated_deform_conv.h"

namespace vsr_fast {
namespace {

using namespace deform_conv_math;
using flow_warp_math::bilinear_blend;
using flow_warp_math::BilinearWeights;

constexpr int kThreads = 256;
// Column buffer bound: 256 MiB holds a whole 180x320 frame's fp32 columns at EDVR's C = 64, 3x3.
constexpr int64_t kColumnBytes = int64_t(256) << 20;

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

// Which sample thread idx of a row chunk (output rows from row0) handles: tap fastest, then deform
// group, then the chunk's pixel l (its column row), so consecutive threads write consecutive channel
// blocks of a column row.
template <typename index_t>
struct SampleIndex {
  index_t k, dg, l, ox, oy;

  __device__ __forceinline__ SampleIndex(const Dims<index_t>& d, index_t idx, index_t row0)
      : k(idx % d.k),
        dg((idx / d.k) % d.groups),
        l(idx / (d.k * d.groups)),
        ox(l % d.wo),
        oy(row0 + l / d.wo) {}
};

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
                                          Strides4<index_t> ms, Strides4<index_t> xs, index_t n,
                                          const SampleIndex<index_t>& where) {
    const index_t k = where.k, oy = where.oy, ox = where.ox;
    const index_t channel = where.dg * d.k + k;
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

// One thread per (pixel of the chunk, deform group, tap), in SampleIndex's order.
template <typename scalar_t, typename off_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    im2col_kernel(const scalar_t* __restrict__ x, Strides4<index_t> xs, const off_t* __restrict__ offset,
                  Strides4<index_t> os, const off_t* __restrict__ mask, Strides4<index_t> ms,
                  scalar_t* __restrict__ cols, Dims<index_t> d, index_t n, index_t row0, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t idx = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= total) return;
  const SampleIndex<index_t> where(d, idx, row0);
  const ThreadSample<acc_t, off_t, index_t> s(d, offset, os, mask, ms, xs, n, where);
  const scalar_t* in = x + n * xs.s0 + where.dg * d.cg * xs.s1;
  scalar_t* dst = cols + where.l * d.c * d.k + (where.dg * d.k + where.k) * d.cg;
  for (index_t c = 0; c < d.cg; ++c) {
    const scalar_t* plane = in + c * xs.s1;
    acc_t v[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      // outside corners read as 0 with weight 0 (NaN for a NaN sample, which so becomes NaN)
      v[q] = s.b.valid[q] ? static_cast<acc_t>(plane[s.corner[q]]) : acc_t(0);
    }
    dst[c] = static_cast<scalar_t>(bilinear_blend(s.b.weight, v[0], v[1], v[2], v[3]) * s.mask);
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
  const SampleIndex<index_t> where(d, idx, row0);
  const ThreadSample<acc_t, off_t, index_t> s(d, offset, os, mask, ms, xs, n, where);
  const index_t channel = where.dg * d.k + where.k;
  const index_t plane0 = n * xs.s0 + where.dg * d.cg * xs.s1;
  const scalar_t* gc = gcols + where.l * d.c * d.k + channel * d.cg;
  acc_t sum_v = acc_t(0), sum_dy = acc_t(0), sum_dx = acc_t(0);
  for (index_t c = 0; c < d.cg; ++c) {
    const index_t plane = plane0 + c * xs.s1;
    const acc_t go = static_cast<acc_t>(gc[c]);
    acc_t v[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      v[q] = s.b.valid[q] ? static_cast<acc_t>(x[plane + s.corner[q]]) : acc_t(0);
      if (grad_x && s.b.valid[q]) atomicAdd(grad_x + plane + s.corner[q], s.mask * s.b.weight.w[q] * go);
    }
    // the sample and its derivatives along y and x: the patch blended with each weight set
    sum_v += go * bilinear_blend(s.b.weight, v[0], v[1], v[2], v[3]);
    sum_dy += go * bilinear_blend(s.b.dweight_dy, v[0], v[1], v[2], v[3]);
    sum_dx += go * bilinear_blend(s.b.dweight_dx, v[0], v[1], v[2], v[3]);
  }
  if (grad_mask) {
    grad_mask[n * gms.s0 + channel * gms.s1 + where.oy * gms.s2 + where.ox * gms.s3] =
        static_cast<off_t>(sum_v);
  }
  if (grad_offset) {
    off_t* g = grad_offset + n * gos.s0 + 2 * channel * gos.s1 + where.oy * gos.s2 + where.ox * gos.s3;
    g[0] = static_cast<off_t>(s.mask * sum_dy);
    g[gos.s1] = static_cast<off_t>(s.mask * sum_dx);
  }
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
  fits_int32({&x, &offset, &mask, &cols}, total, kThreads) ? launch(int32_t{0}) : launch(int64_t{0});
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
          const int64_t chunk = rows_per_chunk(g, x_in.element_size(), kColumnBytes);
          const at::Tensor cols = at::empty({chunk * g.wo, g.k * g.c}, x_in.options());
          for (int64_t n = 0; n < g.n; ++n) {
            for (int64_t row0 = 0; row0 < g.ho; row0 += chunk) {
              const int64_t rows = std::min(chunk, g.ho - row0);
              const at::Tensor c = cols.narrow(0, 0, rows * g.wo);
              if (g.c > 0) launch_im2col<scalar_t, off_t>(g, x_in, offset, mask, c, n, row0, rows, stream);
              columns_times_weight_into(out, n, row0, rows, c, wm, bias);
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
  if (output_mask[0])
    at::globalContext().alertNotDeterministic("vsr_fast::_modulated_deform_conv_backward (CUDA grad_x)");
  // grad_x is scattered with x's strides: make them dense
  const at::Tensor x =
      x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous(x_in.suggest_memory_format());
  DeformConvBackwardSetup b =
      setup_modulated_deform_conv_backward(g, grad_out_in, x, offset, mask, weight, bias_opt, output_mask);
  if (!b.work) return {b.grad_x, b.grad_offset, b.grad_mask, b.grad_weight, b.grad_bias};
  const bool need_x = b.need_x, need_offset = b.need_offset, need_mask = b.need_mask,
             need_weight = b.need_weight, need_columns_grad = b.need_columns_grad;
  const at::Tensor grad_out = grad_out_in.contiguous(x.suggest_memory_format());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "vsr_fast::_modulated_deform_conv_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
        with_flow_type<scalar_t>(x, offset, [&](auto offset_zero) {
          using off_t = decltype(offset_zero);
          const at::Tensor wm = weight_matrix(weight, g.deform_groups);
          const int64_t chunk = rows_per_chunk(g, x.element_size(), kColumnBytes);
          const at::Tensor cols = at::empty({chunk * g.wo, g.k * g.c}, x.options());
          at::Tensor gcols = at::empty({chunk * g.wo, g.k * g.c}, x.options());
          at::Tensor gwm =
              need_weight ? at::zeros({g.k * g.c, g.c_out}, x.options().dtype(acc_type)) : at::Tensor();
          at::Tensor gx_acc;
          if (need_x) {
            gx_acc = acc_type == x.scalar_type()
                         ? b.grad_x.zero_()
                         : at::empty_strided(x.sizes(), x.strides(), x.options().dtype(acc_type)).zero_();
          }
          for (int64_t n = 0; n < g.n; ++n) {
            for (int64_t row0 = 0; row0 < g.ho; row0 += chunk) {
              const int64_t rows = std::min(chunk, g.ho - row0);
              const at::Tensor gout = rows_matrix(grad_out, n, row0, rows);
              if (need_weight) {
                const at::Tensor c = cols.narrow(0, 0, rows * g.wo);
                launch_im2col<scalar_t, off_t>(g, x, offset, mask, c, n, row0, rows, stream);
                accumulate_grad_weight(gwm, c, gout);
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
                    need_offset ? b.grad_offset.mutable_data_ptr<off_t>() : nullptr,
                    need_offset ? strides_of<index_t>(b.grad_offset) : Strides4<index_t>{0, 0, 0, 0},
                    need_mask ? b.grad_mask.mutable_data_ptr<off_t>() : nullptr,
                    need_mask ? strides_of<index_t>(b.grad_mask) : Strides4<index_t>{0, 0, 0, 0},
                    dims_of<index_t>(g), static_cast<index_t>(n), static_cast<index_t>(row0),
                    static_cast<index_t>(total));
                C10_CUDA_KERNEL_LAUNCH_CHECK();
              };
              fits_int32({&x, &offset, &mask, &gc, &gx_acc, &b.grad_offset, &b.grad_mask}, total, kThreads)
                  ? launch(int32_t{0})
                  : launch(int64_t{0});
            }
          }
          if (need_x && !gx_acc.is_same(b.grad_x)) b.grad_x.copy_(gx_acc);
          if (need_weight) copy_weight_matrix(b.grad_weight, gwm, g.deform_groups);
        });
      });
  return {b.grad_x, b.grad_offset, b.grad_mask, b.grad_weight, b.grad_bias};
}

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CUDA, m) {
  m.impl("modulated_deform_conv", &vsr_fast::modulated_deform_conv_cuda);
  m.impl("_modulated_deform_conv_backward", &vsr_fast::modulated_deform_conv_backward_cuda);
}
