// CPU kernels of vsr_fast::modulated_deform_conv and vsr_fast::_modulated_deform_conv_backward.
//
// Forward: deformable im2col into a column buffer [pixels, C * K] whose columns are ordered (deform
// group, tap, channel of the group), then a GEMM through ATen (MKL / oneDNN) written straight into the
// output, chunk by chunk of output rows so that the column buffer stays within kColumnBytes (and in
// cache for the GEMM). x is first copied into [N, deform_groups, H * W + 4, C / deform_groups] in the
// accumulation type: each deform group's image is one compact block (224 KiB at EDVR's 64x112, in L2;
// reading 8 channels out of 64-channel pixels touches a new cache line per corner), channels
// innermost, plus four zero pixels that the corners outside the frame point at, so that every sample
// is the same branch-free 4-corner blend and pixels outside the frame are never read.
// One task is (output row, deform group): its samples are computed tap by tap along the row into a
// table first (contiguous offset reads), then blended pixel by pixel into K * C / deform_groups
// contiguous columns.
//
// Backward, per chunk: the same im2col and a GEMM for grad_weight; grad_columns = grad_out x weight
// (GEMM); then col2im: grad_mask and grad_offset from the sampling derivatives, and grad_x scattered
// into one accumulator per fixed piece of the work (summed at the end of each image), so the result
// does not depend on scheduling. The accumulators' four extra pixels are the scatter targets of the
// corners outside the frame (one per corner, so the four destinations never alias).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_dispatch.h"
#include "vsr_fast/flow_warp.h"
#include "vsr_fast/modulated_deform_conv.h"

namespace vsr_fast {
namespace {

using namespace deform_conv_math;
using flow_warp_math::bilinear_blend;
using flow_warp_math::BilinearWeights;

// Column buffer bound: 4 MiB (2048 pixels x 576 fp32 columns at EDVR's C = 64, 3x3) runs the GEMM
// from cache; measured 160 GFLOP/s against 105 GFLOP/s for one [7168, 576] x [576, 64] product on the
// 2-core CI machine.
constexpr int64_t kColumnBytes = int64_t(4) << 20;
// Lanes of the partial sums in col2im: independent accumulators the compiler can keep in one vector.
constexpr int kLanes = 8;

// x as [N, G, H * W + 4, C / G] in acc_t (G deform groups), the last four pixels of each block zero.
at::Tensor pixels_with_zero(const at::Tensor& x, int64_t groups, at::ScalarType acc_type) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), cg = c / groups;
  at::Tensor xp = at::empty({n, groups, h * w + 4, cg}, x.options().dtype(acc_type));
  xp.narrow(2, 0, h * w)
      .view({n, groups, h, w, cg})
      .copy_(x.reshape({n, groups, cg, h, w}).permute({0, 1, 3, 4, 2}));
  xp.narrow(2, h * w, 4).zero_();
  return xp;
}

template <typename acc_t, typename off_t>
struct Sampling {
  const DeformConvGeometry& g;
  const acc_t* xp;  // [N, G, H * W + 4, C / G]
  const off_t* offset;
  const off_t* mask;
  std::array<int64_t, 4> os, ms;  // offset and mask strides
};

// The samples of one (output row, deform group): for tap k, corner c and output column ox, entry
// (k * 4 + c) * Wo + ox holds the corner's pixel in the group's image (pixel H * W + c where it is
// outside the frame: zero for reads, a dummy for scatters) and its weights; entry k * Wo + ox the mask.
template <typename acc_t>
struct RowSamples {
  std::vector<int32_t> pixel;
  std::vector<acc_t> weight, dweight_dy, dweight_dx, mask;

  void resize(int64_t entries, bool backward) {
    pixel.resize(4 * entries);
    weight.resize(4 * entries);
    mask.resize(entries);
    dweight_dy.resize(backward ? 4 * entries : 0);
    dweight_dx.resize(backward ? 4 * entries : 0);
  }
};

// One tap's samples along an output row (the shared maths). kUnit: offsets and mask have unit stride
// along W (the usual case). GCC does not vectorise this loop (-ftrapping-math keeps the selects as
// branches); perf puts most of im2col's time in it.
// Forward tables fold the mask into the weights; backward tables keep them apart and add derivatives.
template <typename acc_t, typename off_t, bool kUnit, bool kBackward>
C10_ALWAYS_INLINE void tap_samples(const off_t* __restrict__ off_y, const off_t* __restrict__ off_x,
                                   const off_t* __restrict__ mask, int64_t os3, int64_t ms3, acc_t base_y,
                                   acc_t base_x0, acc_t stride_x, int32_t height, int32_t width, int32_t wo,
                                   int32_t* __restrict__ pixel, acc_t* __restrict__ weight,
                                   acc_t* __restrict__ dweight_dy, acc_t* __restrict__ dweight_dx,
                                   acc_t* __restrict__ mask_out) {
  const int32_t outside = height * width;
  const acc_t h = static_cast<acc_t>(height), w = static_cast<acc_t>(width);
  for (int32_t ox = 0; ox < wo; ++ox) {
    const int64_t oi = kUnit ? ox : ox * os3, mi = kUnit ? ox : ox * ms3;
    const BilinearSample<acc_t> b =
        bilinear_sample<acc_t>(base_y, base_x0 + static_cast<acc_t>(ox) * stride_x,
                               static_cast<acc_t>(off_y[oi]), static_cast<acc_t>(off_x[oi]), h, w);
    const acc_t m = static_cast<acc_t>(mask[mi]);
    const int32_t y0 = static_cast<int32_t>(b.y0), x0 = static_cast<int32_t>(b.x0);
    for (int c = 0; c < 4; ++c) {
      pixel[c * wo + ox] = b.valid[c] ? (y0 + (c >> 1)) * width + x0 + (c & 1) : outside + c;
      weight[c * wo + ox] = kBackward ? b.weight.w[c] : b.weight.w[c] * m;
      if constexpr (kBackward) {
        dweight_dy[c * wo + ox] = b.dweight_dy.w[c];
        dweight_dx[c * wo + ox] = b.dweight_dx.w[c];
      }
    }
    if constexpr (kBackward) mask_out[ox] = m;
  }
}

template <typename acc_t, typename off_t, bool kBackward>
C10_ALWAYS_INLINE void row_samples(const Sampling<acc_t, off_t>& s, int64_t n, int64_t oy, int64_t dg,
                                   RowSamples<acc_t>& t) {
  const DeformConvGeometry& g = s.g;
  const int32_t wo = static_cast<int32_t>(g.wo);
  const bool unit = s.os[3] == 1 && s.ms[3] == 1;
  for (int64_t i = 0; i < g.kh; ++i) {
    const acc_t base_y = static_cast<acc_t>(tap_base(oy, g.sh, g.ph, i, g.dh));
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t k = i * g.kw + j, channel = dg * g.k + k;
      const off_t* off_y = s.offset + n * s.os[0] + 2 * channel * s.os[1] + oy * s.os[2];
      const off_t* mask = s.mask + n * s.ms[0] + channel * s.ms[1] + oy * s.ms[2];
      const acc_t base_x0 = static_cast<acc_t>(tap_base(0, g.sw, g.pw, j, g.dw));
      const int64_t e = k * 4 * g.wo;
      acc_t* dwy = kBackward ? t.dweight_dy.data() + e : nullptr;
      acc_t* dwx = kBackward ? t.dweight_dx.data() + e : nullptr;
      acc_t* m = kBackward ? t.mask.data() + k * g.wo : nullptr;
      static_switch(
          [&](auto unit_c) {
            tap_samples<acc_t, off_t, decltype(unit_c)::value, kBackward>(
                off_y, off_y + s.os[1], mask, s.os[3], s.ms[3], base_y, base_x0, static_cast<acc_t>(g.sw),
                static_cast<int32_t>(g.h), static_cast<int32_t>(g.w), wo, t.pixel.data() + e,
                t.weight.data() + e, dwy, dwx, m);
          },
          unit);
    }
  }
}

// kCg: channels per deform group when known at compile time (EDVR: 8), else 0.
template <typename scalar_t, typename acc_t, int kCg>
C10_ALWAYS_INLINE void blend(scalar_t* __restrict__ dst, const acc_t* __restrict__ p0,
                             const acc_t* __restrict__ p1, const acc_t* __restrict__ p2,
                             const acc_t* __restrict__ p3, const BilinearWeights<acc_t>& weights,
                             int64_t cg_runtime) {
  const int64_t cg = kCg ? kCg : cg_runtime;
  for (int64_t c = 0; c < cg; ++c) {
    dst[c] = static_cast<scalar_t>(bilinear_blend(weights, p0[c], p1[c], p2[c], p3[c]));
  }
}

// Columns of output row oy, deform group dg: cols_row is [Wo, C * K].
template <typename scalar_t, typename acc_t, typename off_t, int kCg>
C10_ALWAYS_INLINE void im2col_row(const Sampling<acc_t, off_t>& s, int64_t n, int64_t oy, int64_t dg,
                                  RowSamples<acc_t>& t, scalar_t* cols_row) {
  const DeformConvGeometry& g = s.g;
  const int64_t cg = g.channels_per_group, kc = g.k * g.c, wo = g.wo;
  row_samples<acc_t, off_t, false>(s, n, oy, dg, t);
  const acc_t* image = s.xp + (n * g.deform_groups + dg) * (g.h * g.w + 4) * cg;
  const int32_t* pixel = t.pixel.data();
  const acc_t* weight = t.weight.data();
  for (int64_t ox = 0; ox < wo; ++ox) {
    scalar_t* dst = cols_row + ox * kc + dg * g.k * cg;
    for (int64_t k = 0; k < g.k; ++k) {
      const int64_t e = k * 4 * wo + ox;
      const BilinearWeights<acc_t> weights{
          {weight[e], weight[e + wo], weight[e + 2 * wo], weight[e + 3 * wo]}};
      blend<scalar_t, acc_t, kCg>(dst + k * cg, image + pixel[e] * cg, image + pixel[e + wo] * cg,
                                  image + pixel[e + 2 * wo] * cg, image + pixel[e + 3 * wo] * cg, weights,
                                  cg);
    }
  }
}

// Gradients of output row oy, deform group dg from its column gradients gcols_row [Wo, C * K]:
// grad_offset / grad_mask entries (written, each exactly once over the whole call) and, when kGradX,
// grad_x scattered into gx ([G, H * W + 4, C / G], the last four pixels of each block dummies).
template <typename scalar_t, typename acc_t, typename off_t, int kCg, bool kGradX>
C10_ALWAYS_INLINE void col2im_row(const Sampling<acc_t, off_t>& s, int64_t n, int64_t oy, int64_t dg,
                                  RowSamples<acc_t>& t, const scalar_t* gcols_row, acc_t* gx,
                                  off_t* grad_offset, std::array<int64_t, 4> gos, off_t* grad_mask,
                                  std::array<int64_t, 4> gms) {
  const DeformConvGeometry& g = s.g;
  const int64_t cg = kCg ? kCg : g.channels_per_group, kc = g.k * g.c, wo = g.wo, hw = g.h * g.w;
  row_samples<acc_t, off_t, true>(s, n, oy, dg, t);
  const acc_t* image = s.xp + (n * g.deform_groups + dg) * (hw + 4) * cg;
  acc_t* gx_image = kGradX ? gx + dg * (hw + 4) * cg : nullptr;
  for (int64_t ox = 0; ox < wo; ++ox) {
    for (int64_t k = 0; k < g.k; ++k) {
      const int64_t channel = dg * g.k + k, e = k * 4 * wo + ox;
      const acc_t* __restrict__ p0 = image + t.pixel[e] * cg;
      const acc_t* __restrict__ p1 = image + t.pixel[e + wo] * cg;
      const acc_t* __restrict__ p2 = image + t.pixel[e + 2 * wo] * cg;
      const acc_t* __restrict__ p3 = image + t.pixel[e + 3 * wo] * cg;
      BilinearWeights<acc_t> w, dwy, dwx;
      for (int c = 0; c < 4; ++c) {
        w.w[c] = t.weight[e + c * wo];
        dwy.w[c] = t.dweight_dy[e + c * wo];
        dwx.w[c] = t.dweight_dx[e + c * wo];
      }
      const acc_t m = t.mask[k * wo + ox];
      const scalar_t* __restrict__ gc = gcols_row + ox * kc + channel * cg;
      // independent partial sums per lane: a reduction the compiler may vectorise without reordering
      acc_t sum_v[kLanes] = {}, sum_dy[kLanes] = {}, sum_dx[kLanes] = {};
      auto step = [&](int64_t c, int lane) C10_ALWAYS_INLINE_ATTRIBUTE {
        const acc_t go = static_cast<acc_t>(gc[c]);
        const acc_t v0 = p0[c], v1 = p1[c], v2 = p2[c], v3 = p3[c];
        // the sample and its derivatives along y and x: the patch blended with each weight set
        sum_v[lane] += go * bilinear_blend(w, v0, v1, v2, v3);
        sum_dy[lane] += go * bilinear_blend(dwy, v0, v1, v2, v3);
        sum_dx[lane] += go * bilinear_blend(dwx, v0, v1, v2, v3);
      };
      int64_t c = 0;
      for (; c + kLanes <= cg; c += kLanes) {
        for (int lane = 0; lane < kLanes; ++lane) step(c + lane, lane);
      }
      for (; c < cg; ++c) step(c, 0);
      if constexpr (kGradX) {
        // four distinct pixels (valid corners differ, outside ones have a dummy each)
        acc_t* __restrict__ q0 = gx_image + t.pixel[e] * cg;
        acc_t* __restrict__ q1 = gx_image + t.pixel[e + wo] * cg;
        acc_t* __restrict__ q2 = gx_image + t.pixel[e + 2 * wo] * cg;
        acc_t* __restrict__ q3 = gx_image + t.pixel[e + 3 * wo] * cg;
        const acc_t mw0 = m * w.w[0], mw1 = m * w.w[1], mw2 = m * w.w[2], mw3 = m * w.w[3];
        for (int64_t c = 0; c < cg; ++c) {
          const acc_t go = static_cast<acc_t>(gc[c]);
          q0[c] += mw0 * go;
          q1[c] += mw1 * go;
          q2[c] += mw2 * go;
          q3[c] += mw3 * go;
        }
      }
      acc_t v = 0, dy = 0, dx = 0;
      for (int lane = 0; lane < kLanes; ++lane) {
        v += sum_v[lane];
        dy += sum_dy[lane];
        dx += sum_dx[lane];
      }
      if (grad_mask)
        grad_mask[n * gms[0] + channel * gms[1] + oy * gms[2] + ox * gms[3]] = static_cast<off_t>(v);
      if (grad_offset) {
        off_t* go = grad_offset + n * gos[0] + 2 * channel * gos[1] + oy * gos[2] + ox * gos[3];
        go[0] = static_cast<off_t>(m * dy);
        go[gos[1]] = static_cast<off_t>(m * dx);
      }
    }
  }
}

// The row loops compiled twice: for the build's baseline and, on x86, for AVX2 + FMA (picked at run
// time by cpu_has_avx2_fma). The samples' floor() is one instruction from SSE4.1 on and a libm call
// before it. The bodies are inlined into both clones.
#ifdef VSR_FAST_X86_SIMD
#define VSR_FAST_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

template <typename scalar_t, typename acc_t, typename off_t, int kCg>
C10_ALWAYS_INLINE void im2col_rows(const Sampling<acc_t, off_t>& s, int64_t n, int64_t row0,
                                   int64_t task_begin, int64_t task_end, scalar_t* cols) {
  thread_local RowSamples<acc_t> t;
  t.resize(s.g.k * s.g.wo, false);
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t r = task / s.g.deform_groups, dg = task % s.g.deform_groups;
    im2col_row<scalar_t, acc_t, off_t, kCg>(s, n, row0 + r, dg, t, cols + r * s.g.wo * s.g.k * s.g.c);
  }
}

template <typename scalar_t, typename acc_t, typename off_t, int kCg, bool kGradX>
C10_ALWAYS_INLINE void col2im_rows(const Sampling<acc_t, off_t>& s, int64_t n, int64_t row0,
                                   int64_t task_begin, int64_t task_end, const scalar_t* gcols, acc_t* gx,
                                   off_t* grad_offset, std::array<int64_t, 4> gos, off_t* grad_mask,
                                   std::array<int64_t, 4> gms) {
  thread_local RowSamples<acc_t> t;
  t.resize(s.g.k * s.g.wo, true);
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t r = task / s.g.deform_groups, dg = task % s.g.deform_groups;
    col2im_row<scalar_t, acc_t, off_t, kCg, kGradX>(s, n, row0 + r, dg, t, gcols + r * s.g.wo * s.g.k * s.g.c,
                                                    gx, grad_offset, gos, grad_mask, gms);
  }
}

template <typename scalar_t, typename acc_t, typename off_t, int kCg>
void im2col_rows_baseline(const Sampling<acc_t, off_t>& s, int64_t n, int64_t row0, int64_t task_begin,
                          int64_t task_end, scalar_t* cols) {
  im2col_rows<scalar_t, acc_t, off_t, kCg>(s, n, row0, task_begin, task_end, cols);
}

template <typename scalar_t, typename acc_t, typename off_t, int kCg, bool kGradX>
void col2im_rows_baseline(const Sampling<acc_t, off_t>& s, int64_t n, int64_t row0, int64_t task_begin,
                          int64_t task_end, const scalar_t* gcols, acc_t* gx, off_t* grad_offset,
                          std::array<int64_t, 4> gos, off_t* grad_mask, std::array<int64_t, 4> gms) {
  col2im_rows<scalar_t, acc_t, off_t, kCg, kGradX>(s, n, row0, task_begin, task_end, gcols, gx, grad_offset,
                                                   gos, grad_mask, gms);
}

#ifdef VSR_FAST_X86_SIMD
template <typename scalar_t, typename acc_t, typename off_t, int kCg>
VSR_FAST_TARGET_AVX2 void im2col_rows_avx2(const Sampling<acc_t, off_t>& s, int64_t n, int64_t row0,
                                           int64_t task_begin, int64_t task_end, scalar_t* cols) {
  im2col_rows<scalar_t, acc_t, off_t, kCg>(s, n, row0, task_begin, task_end, cols);
}

template <typename scalar_t, typename acc_t, typename off_t, int kCg, bool kGradX>
VSR_FAST_TARGET_AVX2 void col2im_rows_avx2(const Sampling<acc_t, off_t>& s, int64_t n, int64_t row0,
                                           int64_t task_begin, int64_t task_end, const scalar_t* gcols,
                                           acc_t* gx, off_t* grad_offset, std::array<int64_t, 4> gos,
                                           off_t* grad_mask, std::array<int64_t, 4> gms) {
  col2im_rows<scalar_t, acc_t, off_t, kCg, kGradX>(s, n, row0, task_begin, task_end, gcols, gx, grad_offset,
                                                   gos, grad_mask, gms);
}
#endif

// Calls fn(std::integral_constant<int, kCg>) with kCg = 8 where the group has 8 channels, else 0.
template <typename Fn>
void with_group_channels(int64_t cg, Fn&& fn) {
  static_switch([&](auto eight) { fn(std::integral_constant<int, decltype(eight)::value ? 8 : 0>{}); },
                cg == 8);
}

template <typename scalar_t, typename acc_t, typename off_t>
void im2col_chunk(const Sampling<acc_t, off_t>& s, int64_t n, int64_t row0, int64_t rows, scalar_t* cols) {
  with_group_channels(s.g.channels_per_group, [&](auto cg_c) {
    constexpr int kCg = decltype(cg_c)::value;
    at::parallel_for(0, rows * s.g.deform_groups, 1, [&](int64_t begin, int64_t end) {
#ifdef VSR_FAST_X86_SIMD
      if (cpu_has_avx2_fma()) {
        im2col_rows_avx2<scalar_t, acc_t, off_t, kCg>(s, n, row0, begin, end, cols);
        return;
      }
#endif
      im2col_rows_baseline<scalar_t, acc_t, off_t, kCg>(s, n, row0, begin, end, cols);
    });
  });
}

std::array<int64_t, 4> strides4(const at::Tensor& t) {
  if (!t.defined() || t.dim() != 4) return {0, 0, 0, 0};
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename acc_t, typename off_t>
Sampling<acc_t, off_t> sampling_of(const DeformConvGeometry& g, const at::Tensor& xp,
                                   const at::Tensor& offset, const at::Tensor& mask) {
  return {g,
          xp.const_data_ptr<acc_t>(),
          offset.const_data_ptr<off_t>(),
          mask.const_data_ptr<off_t>(),
          strides4(offset),
          strides4(mask)};
}

void check_cpu(const char* op, const at::Tensor& x, const DeformConvGeometry& g) {
  TORCH_CHECK(x.device().is_cpu(), op, ": CPU kernel called with x on ", x.device());
  // the row tables index pixels with int32
  TORCH_CHECK(g.h * g.w + 4 <= std::numeric_limits<int32_t>::max(), op,
              ": frames of over 2^31 pixels are not "
              "supported on CPU, got x ",
              x.sizes());
}

at::Tensor modulated_deform_conv_cpu(const at::Tensor& x, const at::Tensor& offset, const at::Tensor& mask,
                                     const at::Tensor& weight, const std::optional<at::Tensor>& bias_opt,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups, int64_t deform_groups) {
  const char* op = "vsr_fast::modulated_deform_conv";
  const DeformConvGeometry g = check_modulated_deform_conv_args(op, x, offset, mask, weight, bias_opt, stride,
                                                                padding, dilation, groups, deform_groups);
  check_cpu(op, x, g);
  const at::Tensor bias = bias_opt.has_value() ? *bias_opt : at::Tensor();
  const auto format = x.suggest_memory_format();
  at::Tensor out = at::empty({g.n, g.c_out, g.ho, g.wo}, x.options().memory_format(format));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "vsr_fast::modulated_deform_conv", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        with_flow_type<scalar_t>(x, offset, [&](auto offset_zero) {
          using off_t = decltype(offset_zero);
          const at::Tensor xp = pixels_with_zero(x, g.deform_groups, c10::CppTypeToScalarType<acc_t>::value);
          const auto s = sampling_of<acc_t, off_t>(g, xp, offset, mask);
          const at::Tensor wm = weight_matrix(weight, g.deform_groups);
          const int64_t chunk = rows_per_chunk(g, x.element_size(), kColumnBytes);
          at::Tensor cols = at::empty({chunk * g.wo, g.k * g.c}, x.options());
          for (int64_t n = 0; n < g.n; ++n) {
            for (int64_t row0 = 0; row0 < g.ho; row0 += chunk) {
              const int64_t rows = std::min(chunk, g.ho - row0);
              at::Tensor c = cols.narrow(0, 0, rows * g.wo);
              im2col_chunk<scalar_t, acc_t, off_t>(s, n, row0, rows, c.mutable_data_ptr<scalar_t>());
              columns_times_weight_into(out, n, row0, rows, c, wm, bias);
            }
          }
        });
      });
  return out;
}

template <typename scalar_t, typename acc_t, typename off_t>
void col2im_tasks(const Sampling<acc_t, off_t>& s, int64_t n, int64_t row0, int64_t begin, int64_t end,
                  const scalar_t* gcols, acc_t* gx, off_t* grad_offset, std::array<int64_t, 4> gos,
                  off_t* grad_mask, std::array<int64_t, 4> gms) {
  with_group_channels(s.g.channels_per_group, [&](auto cg_c) {
    constexpr int kCg = decltype(cg_c)::value;
    static_switch(
        [&](auto grad_x_c) {
          constexpr bool kGradX = decltype(grad_x_c)::value;
#ifdef VSR_FAST_X86_SIMD
          if (cpu_has_avx2_fma()) {
            col2im_rows_avx2<scalar_t, acc_t, off_t, kCg, kGradX>(s, n, row0, begin, end, gcols, gx,
                                                                  grad_offset, gos, grad_mask, gms);
            return;
          }
#endif
          col2im_rows_baseline<scalar_t, acc_t, off_t, kCg, kGradX>(s, n, row0, begin, end, gcols, gx,
                                                                    grad_offset, gos, grad_mask, gms);
        },
        gx != nullptr);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> modulated_deform_conv_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias_opt, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t deform_groups,
    std::array<bool, 5> output_mask) {
  const char* op = "vsr_fast::_modulated_deform_conv_backward";
  const DeformConvGeometry g = check_modulated_deform_conv_args(op, x, offset, mask, weight, bias_opt, stride,
                                                                padding, dilation, groups, deform_groups);
  check_cpu(op, x, g);
  check_modulated_deform_conv_grad_out(op, grad_out_in, x, g);
  DeformConvBackwardSetup b =
      setup_modulated_deform_conv_backward(g, grad_out_in, x, offset, mask, weight, bias_opt, output_mask);
  if (!b.work) return {b.grad_x, b.grad_offset, b.grad_mask, b.grad_weight, b.grad_bias};
  const bool need_x = b.need_x, need_offset = b.need_offset, need_mask = b.need_mask,
             need_weight = b.need_weight, need_columns_grad = b.need_columns_grad;
  // rows_matrix views need a layout whose pixels merge into one dimension
  const at::Tensor grad_out = grad_out_in.contiguous(x.suggest_memory_format());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "vsr_fast::_modulated_deform_conv_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
        with_flow_type<scalar_t>(x, offset, [&](auto offset_zero) {
          using off_t = decltype(offset_zero);
          const at::Tensor xp = pixels_with_zero(x, g.deform_groups, acc_type);
          const auto s = sampling_of<acc_t, off_t>(g, xp, offset, mask);
          const at::Tensor wm = weight_matrix(weight, g.deform_groups);
          const int64_t chunk = rows_per_chunk(g, x.element_size(), kColumnBytes);
          at::Tensor cols = at::empty({chunk * g.wo, g.k * g.c}, x.options());
          at::Tensor gcols =
              need_columns_grad ? at::empty({chunk * g.wo, g.k * g.c}, x.options()) : at::Tensor();
          // grad_weight in the GEMM's [K * C, C_out] order, accumulated over chunks in acc_t
          at::Tensor gwm =
              need_weight ? at::zeros({g.k * g.c, g.c_out}, x.options().dtype(acc_type)) : at::Tensor();
          // Pieces of each chunk's (row, deform group) tasks, fixed by the thread count at the call: piece
          // p always scatters into accumulator p.
          const int64_t pieces =
              std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), chunk * g.deform_groups));
          const int64_t hw = g.h * g.w;
          const int64_t cg = g.channels_per_group;
          at::Tensor gx_pieces =
              need_x ? at::empty({pieces, g.deform_groups, hw + 4, cg}, x.options().dtype(acc_type))
                     : at::Tensor();
          off_t* go_ptr = need_offset ? b.grad_offset.mutable_data_ptr<off_t>() : nullptr;
          off_t* gm_ptr = need_mask ? b.grad_mask.mutable_data_ptr<off_t>() : nullptr;
          const auto gos = strides4(b.grad_offset), gms = strides4(b.grad_mask);
          for (int64_t n = 0; n < g.n; ++n) {
            if (need_x) gx_pieces.zero_();
            acc_t* gx_base = need_x ? gx_pieces.mutable_data_ptr<acc_t>() : nullptr;
            for (int64_t row0 = 0; row0 < g.ho; row0 += chunk) {
              const int64_t rows = std::min(chunk, g.ho - row0);
              const at::Tensor gout = rows_matrix(grad_out, n, row0, rows);
              if (need_weight) {
                const at::Tensor c = cols.narrow(0, 0, rows * g.wo);
                im2col_chunk<scalar_t, acc_t, off_t>(s, n, row0, rows, c.mutable_data_ptr<scalar_t>());
                accumulate_grad_weight(gwm, c, gout);
              }
              if (!need_columns_grad) continue;
              at::Tensor gc = gcols.narrow(0, 0, rows * g.wo);
              at::mm_out(gc, gout, wm.t());
              const scalar_t* gc_ptr = gc.const_data_ptr<scalar_t>();
              const int64_t tasks = rows * g.deform_groups;
              const int64_t chunk_pieces = std::min(pieces, tasks);
              at::parallel_for(0, chunk_pieces, 1, [&](int64_t piece_begin, int64_t piece_end) {
                for (int64_t piece = piece_begin; piece < piece_end; ++piece) {
                  acc_t* gx = gx_base ? gx_base + piece * g.deform_groups * (hw + 4) * cg : nullptr;
                  col2im_tasks<scalar_t, acc_t, off_t>(s, n, row0, piece * tasks / chunk_pieces,
                                                       (piece + 1) * tasks / chunk_pieces, gc_ptr, gx, go_ptr,
                                                       gos, gm_ptr, gms);
                }
              });
            }
            if (need_x) {
              const at::Tensor total = pieces == 1 ? gx_pieces.select(0, 0) : gx_pieces.sum(0);
              b.grad_x.select(0, n)
                  .view({g.deform_groups, cg, g.h, g.w})
                  .copy_(total.narrow(1, 0, hw).view({g.deform_groups, g.h, g.w, cg}).permute({0, 3, 1, 2}));
            }
          }
          if (need_weight) copy_weight_matrix(b.grad_weight, gwm, g.deform_groups);
        });
      });
  return {b.grad_x, b.grad_offset, b.grad_mask, b.grad_weight, b.grad_bias};
}

}  // namespace
}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CPU, m) {
  m.impl("modulated_deform_conv", &vsr_fast::modulated_deform_conv_cpu);
  m.impl("_modulated_deform_conv_backward", &vsr_fast::modulated_deform_conv_backward_cpu);
}
