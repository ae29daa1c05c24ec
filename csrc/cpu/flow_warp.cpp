// CPU kernels of vsr_fast::flow_warp and vsr_fast::_flow_warp_backward.
//
// Both walk the image row by row: a row's taps are computed once (shared maths of
// vsr_fast/flow_warp.h) into a compact table, then every channel reuses the table.
// * Channels with unit stride (channels_last): per pixel, one contiguous sweep over the channels.
// * Otherwise (NCHW): per channel, one sweep along the row. Sweeping many planes per pixel instead
//   thrashes L1: planes of a VSR feature map are often a multiple of 1 KiB apart, so a dozen of them
//   land in the same cache sets.
// Pixels whose four bilinear taps are all inside the image take a branch-free path; the others (and
// nearest mode) keep their full PixelTaps in a side table.
//
// Forward parallelises over rows. Backward parallelises over (image, channel block) so each task owns
// the grad_x planes it scatters into: no atomics and no races. grad_flow partial sums of each channel
// block are reduced afterwards.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <array>
#include <tuple>
#include <vector>

#include "cpu_kernels.h"
#include "vsr_fast/flow_warp.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define VSR_FAST_X86_SIMD 1
#include <immintrin.h>
#endif

namespace vsr_fast {
namespace {

using namespace flow_warp_math;

// Output rows per forward task: the taps of a band are computed together and, for NCHW fp32, its
// input rows are transposed into 8-channel pixels once per 8-channel block (see forward_kernel).
constexpr int64_t kBandRows = 16;

bool cpu_has_avx2_fma();

#ifdef VSR_FAST_X86_SIMD
// Row taps of the propagation mode (bilinear, zeros, align_corners=True, fp32 flow, width > 1) in
// a loop the compiler vectorises. It marks a pixel fast exactly when pixel_taps would (all four taps
// inside: 0 <= pos + floor(flow) <= size - 2 on both axes, NaN failing every comparison) and then
// produces pixel_taps's values: base offset, frac = flow - floor(flow), dpos = 1. Every other pixel
// is left to pixel_taps (tests/test_flow_warp.py compares the two on edge cases).
__attribute__((target("avx2,fma"))) void propagation_row_taps_avx2(
    const float* __restrict__ flow, int64_t flow_sw, int64_t flow_sk, int32_t width, int32_t y,
    int32_t height, int32_t stride_h, int32_t stride_w, int32_t* __restrict__ base,
    int32_t* __restrict__ row0, float* __restrict__ frac_x, float* __restrict__ frac_y,
    int32_t* __restrict__ fast) {
  const float x_last = static_cast<float>(width - 2), y_last = static_cast<float>(height - 2);
  const float row = static_cast<float>(y);
  for (int32_t ix = 0; ix < width; ++ix) {
    const float u = flow[ix * flow_sw], v = flow[ix * flow_sw + flow_sk];
    const float u_floor = floorf(u), v_floor = floorf(v);
    const float x0 = static_cast<float>(ix) + u_floor, y0 = row + v_floor;  // exact integers
    const bool ok = x0 >= 0.f && x0 <= x_last && y0 >= 0.f && y0 <= y_last;
    row0[ix] = static_cast<int32_t>(ok ? y0 : 0.f);
    base[ix] = row0[ix] * stride_h + static_cast<int32_t>(ok ? x0 : 0.f) * stride_w;
    frac_x[ix] = ok ? u - u_floor : 0.f;
    frac_y[ix] = ok ? v - v_floor : 0.f;
    fast[ix] = ok ? -1 : 0;
  }
}
#endif

// The taps of one row of output pixels.
template <typename acc_t>
struct RowTaps {
  std::vector<int64_t> base;  // offset of the top-left tap (fast pixels)
  std::vector<acc_t> frac_x, frac_y, dpos_x, dpos_y;
  std::vector<int32_t> base32;  // the same offsets for the SIMD gathers (when they fit)
  std::vector<int32_t> row0;  // the top taps' row (fast pixels; 0 for slow ones)
  std::vector<int32_t> slow;  // -1: fast pixel, else index into `slow_taps`
  std::vector<PixelTaps<acc_t>> slow_taps;
  std::vector<int32_t> slow_pixels;  // the column of each entry of slow_taps

  explicit RowTaps(int64_t width) { resize(width); }

  void resize(int64_t width) {
    for (auto* v : {&frac_x, &frac_y, &dpos_x, &dpos_y}) v->resize(width);
    for (auto* v : {&base32, &row0, &slow}) v->resize(width);
    base.resize(width);
    slow_taps.reserve(width);
    slow_pixels.reserve(width);
  }

  template <typename flow_t>
  void compute(const flow_t* flow_row, int64_t flow_sw, int64_t flow_sk, int64_t y, int64_t height,
               int64_t width, int64_t sh, int64_t sw, bool align_corners, int64_t padding,
               int64_t interpolation) {
    // The modes become compile-time constants of the (force-inlined) shared maths, which then sheds
    // its branches: a third of the forward's time went to tap computation before.
    const bool border = padding == kBorder, nearest = interpolation == kNearest;
    auto run = [&](auto align_c, auto border_c, auto nearest_c) {
      compute_impl<decltype(align_c)::value, decltype(border_c)::value, decltype(nearest_c)::value>(
          flow_row, flow_sw, flow_sk, y, height, width, sh, sw);
    };
    using T = std::true_type;
    using F = std::false_type;
    if (nearest) {
      if (align_corners) border ? run(T{}, T{}, T{}) : run(T{}, F{}, T{});
      else border ? run(F{}, T{}, T{}) : run(F{}, F{}, T{});
    } else {
      if (align_corners) border ? run(T{}, T{}, F{}) : run(T{}, F{}, F{});
      else border ? run(F{}, T{}, F{}) : run(F{}, F{}, F{});
    }
  }

  template <bool kAlign, bool kBorder, bool kNearest, typename flow_t>
  void compute_impl(const flow_t* flow_row, int64_t flow_sw, int64_t flow_sk, int64_t y,
                    int64_t height, int64_t width, int64_t sh, int64_t sw) {
    slow_taps.clear();
    slow_pixels.clear();
#ifdef VSR_FAST_X86_SIMD
    if constexpr (kAlign && !kBorder && !kNearest && std::is_same_v<flow_t, float> &&
                  std::is_same_v<acc_t, float>) {
      if (width > 1 && cpu_has_avx2_fma() && offsets_fit_int32(height, width, sh, sw)) {
        propagation_row_taps_avx2(flow_row, flow_sw, flow_sk, static_cast<int32_t>(width),
                                  static_cast<int32_t>(y), static_cast<int32_t>(height),
                                  static_cast<int32_t>(sh), static_cast<int32_t>(sw), base32.data(),
                                  row0.data(), frac_x.data(), frac_y.data(), slow.data());
        for (int64_t ix = 0; ix < width; ++ix) {
          base[ix] = base32[ix];
          dpos_x[ix] = dpos_y[ix] = slow[ix] < 0 ? acc_t(1) : acc_t(0);
          if (slow[ix] < 0) continue;
          classify<kAlign, kBorder, kNearest>(flow_row, flow_sw, flow_sk, y, height, width, sh, sw, ix);
        }
        return;
      }
    }
#endif
    for (int64_t ix = 0; ix < width; ++ix) {
      classify<kAlign, kBorder, kNearest>(flow_row, flow_sw, flow_sk, y, height, width, sh, sw, ix);
    }
  }

  static bool offsets_fit_int32(int64_t height, int64_t width, int64_t sh, int64_t sw) {
    return height * sh + width * sw < std::numeric_limits<int32_t>::max();
  }

  template <bool kAlign, bool kBorder, bool kNearest, typename flow_t>
  inline void classify(const flow_t* flow_row, int64_t flow_sw, int64_t flow_sk, int64_t y,
                       int64_t height, int64_t width, int64_t sh, int64_t sw, int64_t ix) {
    {
      const flow_t* f = flow_row + ix * flow_sw;
      const PixelTaps<acc_t> t = pixel_taps<acc_t>(
          y, ix, static_cast<acc_t>(f[0]), static_cast<acc_t>(f[flow_sk]), height, width, sh, sw,
          kAlign, kBorder ? kBorder : kZeros, kNearest ? kNearest : kBilinear);
      if (t.num_taps == 4 && t.all_valid()) {
        base[ix] = t.offset[0];
        row0[ix] = static_cast<int32_t>(t.row0);
        frac_x[ix] = t.frac_x;
        frac_y[ix] = t.frac_y;
        dpos_x[ix] = t.dpos_x;
        dpos_y[ix] = t.dpos_y;
        slow[ix] = -1;
      } else {
        // Branch-free sweeps compute a throw-away value from the plane origin for slow pixels, then
        // overwrite it; zero weights keep that read harmless.
        base[ix] = 0;
        row0[ix] = 0;
        frac_x[ix] = frac_y[ix] = dpos_x[ix] = dpos_y[ix] = acc_t(0);
        slow[ix] = static_cast<int32_t>(slow_taps.size());
        slow_taps.push_back(t);
        slow_pixels.push_back(static_cast<int32_t>(ix));
      }
      base32[ix] = static_cast<int32_t>(base[ix]);  // used only where all offsets fit in int32
    }
  }
};

template <typename scalar_t, typename acc_t>
inline acc_t sample_slow(const PixelTaps<acc_t>& t, const scalar_t* in) {
  if (t.nan_out) return static_cast<acc_t>(NAN);
  acc_t v = acc_t(0);
  for (int k = 0; k < t.num_taps; ++k) {
    if (t.valid[k]) v += t.weight[k] * static_cast<acc_t>(in[t.offset[k]]);
  }
  return v;
}

#ifdef VSR_FAST_X86_SIMD
// The 2x2 patches of 8 pixels (plane offsets base[0..7], rows dy apart). Left and right taps are
// neighbours, so each pair comes with one 64-bit gather lane: half the gathered lanes of 32-bit
// gathers (4.6 -> 3.4 ms per [64, 180, 320] forward sweep on one core here, N(0, 3^2) flows).
// The lanes come back in pixel order 0 1 4 5 2 3 6 7.
struct Patches8 {
  __m256 v00, v01, v10, v11;
};

__attribute__((target("avx2,fma"))) inline Patches8 gather_patches_avx2(const float* plane,
                                                                        const int32_t* base,
                                                                        int32_t dy) {
  const double* pairs = reinterpret_cast<const double*>(plane);  // byte address = 4 * index
  const __m128i down = _mm_set1_epi32(dy);
  const __m128i b0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base));
  const __m128i b1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + 4));
  const __m256 t0 = _mm256_castpd_ps(_mm256_i32gather_pd(pairs, b0, 4));
  const __m256 t1 = _mm256_castpd_ps(_mm256_i32gather_pd(pairs, b1, 4));
  const __m256 u0 = _mm256_castpd_ps(_mm256_i32gather_pd(pairs, _mm_add_epi32(b0, down), 4));
  const __m256 u1 = _mm256_castpd_ps(_mm256_i32gather_pd(pairs, _mm_add_epi32(b1, down), 4));
  return {_mm256_shuffle_ps(t0, t1, 0x88), _mm256_shuffle_ps(t0, t1, 0xDD),
          _mm256_shuffle_ps(u0, u1, 0x88), _mm256_shuffle_ps(u0, u1, 0xDD)};
}

// Compiled for AVX2+FMA whatever the build flags; called only after a run-time CPU check.
__attribute__((target("avx2,fma"))) void sweep_row_avx2(const float* plane, float* out,
                                                        int64_t width, const int32_t* base,
                                                        const float* frac_x, const float* frac_y,
                                                        int32_t dx, int32_t dy) {
  const __m256i vdx = _mm256_set1_epi32(dx), vdy = _mm256_set1_epi32(dy),
                vdxy = _mm256_set1_epi32(dx + dy);
  const __m256 one = _mm256_set1_ps(1.f);
  int64_t ix = 0;
  // Rows of a plane are visited once per output row, one plane after another, so the hardware
  // streamers see only ~W/16 lines per stream: fetch the rows the next output row will need (two
  // below the current taps) while this one computes. Out-of-range prefetches are harmless.
  const int64_t ahead = 2 * static_cast<int64_t>(dy);
  if (dx == 1) {
    // Weights follow the pair gathers' pixel order; the result is put back before the store.
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    for (; ix + 8 <= width; ix += 8) {
      _mm_prefetch(reinterpret_cast<const char*>(plane + base[ix] + ahead), _MM_HINT_T0);
      const auto [v00, v01, v10, v11] = gather_patches_avx2(plane, base + ix, dy);
      const __m256 fx = _mm256_permutevar8x32_ps(_mm256_loadu_ps(frac_x + ix), order);
      const __m256 fy = _mm256_permutevar8x32_ps(_mm256_loadu_ps(frac_y + ix), order);
      const __m256 gx = _mm256_sub_ps(one, fx);
      const __m256 top = _mm256_fmadd_ps(fx, v01, _mm256_mul_ps(gx, v00));
      const __m256 bottom = _mm256_fmadd_ps(fx, v11, _mm256_mul_ps(gx, v10));
      const __m256 r = _mm256_fmadd_ps(fy, bottom, _mm256_mul_ps(_mm256_sub_ps(one, fy), top));
      _mm256_storeu_ps(out + ix, _mm256_permutevar8x32_ps(r, order));
    }
  }
  for (; ix + 8 <= width; ix += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(plane + base[ix] + ahead), _MM_HINT_T0);
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + ix));
    const __m256 fx = _mm256_loadu_ps(frac_x + ix), fy = _mm256_loadu_ps(frac_y + ix);
    const __m256 v00 = _mm256_i32gather_ps(plane, b, 4);
    const __m256 v01 = _mm256_i32gather_ps(plane, _mm256_add_epi32(b, vdx), 4);
    const __m256 v10 = _mm256_i32gather_ps(plane, _mm256_add_epi32(b, vdy), 4);
    const __m256 v11 = _mm256_i32gather_ps(plane, _mm256_add_epi32(b, vdxy), 4);
    const __m256 gx = _mm256_sub_ps(one, fx);
    const __m256 top = _mm256_fmadd_ps(fx, v01, _mm256_mul_ps(gx, v00));
    const __m256 bottom = _mm256_fmadd_ps(fx, v11, _mm256_mul_ps(gx, v10));
    _mm256_storeu_ps(out + ix, _mm256_fmadd_ps(fy, bottom, _mm256_mul_ps(_mm256_sub_ps(one, fy), top)));
  }
  for (; ix < width; ++ix) {
    const float fx = frac_x[ix], fy = frac_y[ix];
    const float* p = plane + base[ix];
    out[ix] = (1 - fy) * ((1 - fx) * p[0] + fx * p[dx]) + fy * ((1 - fx) * p[dy] + fx * p[dx + dy]);
  }
}

__attribute__((target("avx2,fma"))) void blend_channels_avx2(const float* p0, const float* p1,
                                                             const float* p2, const float* p3,
                                                             float* out, int64_t channels, float w0,
                                                             float w1, float w2, float w3) {
  const __m256 a = _mm256_set1_ps(w0), b = _mm256_set1_ps(w1), c = _mm256_set1_ps(w2),
               d = _mm256_set1_ps(w3);
  int64_t i = 0;
  for (; i + 8 <= channels; i += 8) {
    __m256 r = _mm256_mul_ps(a, _mm256_loadu_ps(p0 + i));
    r = _mm256_fmadd_ps(b, _mm256_loadu_ps(p1 + i), r);
    r = _mm256_fmadd_ps(c, _mm256_loadu_ps(p2 + i), r);
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(p3 + i), r));
  }
  for (; i < channels; ++i) out[i] = w0 * p0[i] + w1 * p1[i] + w2 * p2[i] + w3 * p3[i];
}

// Backward of one NCHW fp32 plane along one row (x stride 1, unit-stride grad_out row): the flow
// gradient is computed 8 pixels at a time with the forward's pair gathers, the grad_x scatter stays
// scalar (taps of neighbouring pixels collide) but with the weights computed in vectors. Slow pixels
// are masked out here; the caller handles them.
__attribute__((target("avx2,fma"))) void backward_row_avx2(
    const float* plane, float* gx, const float* g, int64_t width, const int32_t* base,
    const int32_t* slow, const float* frac_x, const float* frac_y, const float* dpos_x,
    const float* dpos_y, int32_t dy, float* dflow_x, float* dflow_y) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  alignas(32) float w[4][8];
  int64_t ix = 0;
  for (; ix + 8 <= width; ix += 8) {
    const __m256 go = _mm256_loadu_ps(g + ix);
    const __m256 fx = _mm256_loadu_ps(frac_x + ix), fy = _mm256_loadu_ps(frac_y + ix);
    const __m256i slow_v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(slow + ix));
    const __m256 fast = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_setzero_si256(), slow_v));
    if (dflow_x) {
      const Patches8 p = gather_patches_avx2(plane, base + ix, dy);
      // back to pixel order 0..7
      const __m256 v00 = _mm256_permutevar8x32_ps(p.v00, order), v01 = _mm256_permutevar8x32_ps(p.v01, order);
      const __m256 v10 = _mm256_permutevar8x32_ps(p.v10, order), v11 = _mm256_permutevar8x32_ps(p.v11, order);
      const __m256 dx_sum = _mm256_fmadd_ps(fy, _mm256_sub_ps(v11, v10),
                                            _mm256_mul_ps(_mm256_sub_ps(one, fy), _mm256_sub_ps(v01, v00)));
      const __m256 dy_sum = _mm256_fmadd_ps(fx, _mm256_sub_ps(v11, v01),
                                            _mm256_mul_ps(_mm256_sub_ps(one, fx), _mm256_sub_ps(v10, v00)));
      // the and-mask (not a multiply) keeps inf/NaN read for slow pixels out of the sums
      const __m256 ddx = _mm256_and_ps(fast, _mm256_mul_ps(_mm256_mul_ps(go, _mm256_loadu_ps(dpos_x + ix)), dx_sum));
      const __m256 ddy = _mm256_and_ps(fast, _mm256_mul_ps(_mm256_mul_ps(go, _mm256_loadu_ps(dpos_y + ix)), dy_sum));
      _mm256_storeu_ps(dflow_x + ix, _mm256_add_ps(_mm256_loadu_ps(dflow_x + ix), ddx));
      _mm256_storeu_ps(dflow_y + ix, _mm256_add_ps(_mm256_loadu_ps(dflow_y + ix), ddy));
    }
    if (gx) {
      const __m256 gxw = _mm256_sub_ps(one, fx);
      const __m256 top = _mm256_mul_ps(go, _mm256_sub_ps(one, fy)), bottom = _mm256_mul_ps(go, fy);
      _mm256_store_ps(w[0], _mm256_mul_ps(top, gxw));
      _mm256_store_ps(w[1], _mm256_mul_ps(top, fx));
      _mm256_store_ps(w[2], _mm256_mul_ps(bottom, gxw));
      _mm256_store_ps(w[3], _mm256_mul_ps(bottom, fx));
      for (int k = 0; k < 8; ++k) {
        if (slow[ix + k] >= 0) continue;
        float* p = gx + base[ix + k];
        p[0] += w[0][k];
        p[1] += w[1][k];
        p[dy] += w[2][k];
        p[dy + 1] += w[3][k];
      }
    }
  }
  for (; ix < width; ++ix) {
    if (slow[ix] >= 0) continue;
    const float fx = frac_x[ix], fy = frac_y[ix], go = g[ix];
    const int32_t b = base[ix];
    if (gx) {
      gx[b] += (1 - fy) * (1 - fx) * go;
      gx[b + 1] += (1 - fy) * fx * go;
      gx[b + dy] += fy * (1 - fx) * go;
      gx[b + dy + 1] += fy * fx * go;
    }
    if (dflow_x) {
      const float v00 = plane[b], v01 = plane[b + 1], v10 = plane[b + dy], v11 = plane[b + dy + 1];
      dflow_x[ix] += go * dpos_x[ix] * ((1 - fy) * (v01 - v00) + fy * (v11 - v10));
      dflow_y[ix] += go * dpos_y[ix] * ((1 - fx) * (v10 - v00) + fx * (v11 - v01));
    }
  }
}

__attribute__((target("avx2,fma"))) inline void transpose8x8(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// One thread's buffers for warp_band_nchw8_avx2.
struct BandScratch {
  std::vector<float> pixels8;   // the band's tap rows x W pixels x 8 channels, then a 0 and a NaN pixel
  std::vector<int32_t> offset;  // per band pixel: index of its top-left tap in pixels8
  std::vector<float> weight;    // per band pixel: its 4 bilinear weights
  // Slow pixels (some tap outside the image, NaN positions, nearest): each tap on its own, taps
  // outside the image reading the 0 pixel, so no inf/NaN pixel elsewhere leaks in.
  struct Slow {
    int32_t row, column;
    int32_t offset[4];
    float weight[4];
  };
  std::vector<Slow> slow;
};

// NCHW fp32 with unit stride along W: the output rows of a band for every full block of 8 channels.
// A block's input rows (those the band's taps reach) are first transposed to 8-channel pixels, so a
// tap becomes one contiguous 32-byte load instead of a gather lane, and each 8x8 block of results is
// transposed back into 8 output rows (sweep of [64, 180, 320], N(0, 3^2) flows, one core: 3.4 ms
// with pair gathers, 2.4 ms this way). Slow pixels are done 8 channels at a time too, tap by tap.
// Returns the number of channels done: C rounded down to a multiple of 8.
__attribute__((target("avx2,fma"))) int64_t warp_band_nchw8_avx2(
    const float* in, int64_t plane_stride, int64_t row_stride, float* out,
    int64_t out_plane_stride, int64_t out_row_stride, int64_t channels, int64_t width,
    const RowTaps<float>* rows, int64_t band_rows, BandScratch& s) {
  // The rows the band's valid taps reach (fast pixels: row0 and row0 + 1; slow ones: per tap).
  int64_t first = std::numeric_limits<int64_t>::max(), last = -1;
  auto reach = [&](int64_t row) {
    first = std::min(first, row);
    last = std::max(last, row);
  };
  for (int64_t r = 0; r < band_rows; ++r) {
    const RowTaps<float>& row = rows[r];
    for (int64_t ix = 0; ix < width; ++ix) {
      if (row.slow[ix] < 0) {
        reach(row.row0[ix]);
        reach(row.row0[ix] + 1);
      }
    }
    for (const PixelTaps<float>& t : row.slow_taps) {
      for (int k = 0; k < t.num_taps; ++k) {
        if (t.valid[k]) reach(t.offset[k] / row_stride);
      }
    }
  }
  if (last < first) first = last = 0;  // no valid tap at all: only the 0 / NaN pixels are read
  const int64_t tap_rows = last - first + 1;
  const int64_t zero_pixel = tap_rows * width * 8, nan_pixel = zero_pixel + 8;
  s.pixels8.resize(nan_pixel + 8);
  std::fill(s.pixels8.begin() + zero_pixel, s.pixels8.begin() + nan_pixel, 0.f);
  std::fill(s.pixels8.begin() + nan_pixel, s.pixels8.end(), std::numeric_limits<float>::quiet_NaN());
  s.offset.resize(band_rows * width);
  s.weight.resize(band_rows * width * 4);
  s.slow.clear();
  for (int64_t r = 0; r < band_rows; ++r) {
    const RowTaps<float>& row = rows[r];
    for (int64_t ix = 0; ix < width; ++ix) {
      const int64_t i = r * width + ix;
      const bool fast = row.slow[ix] < 0;
      const int64_t x0 = row.base32[ix] - static_cast<int64_t>(row.row0[ix]) * row_stride;
      // slow pixels: a harmless in-buffer read here, the exact value below
      s.offset[i] = fast ? static_cast<int32_t>(((row.row0[ix] - first) * width + x0) * 8) : 0;
      const float fx = row.frac_x[ix], fy = row.frac_y[ix];
      s.weight[4 * i] = (1 - fy) * (1 - fx);
      s.weight[4 * i + 1] = (1 - fy) * fx;
      s.weight[4 * i + 2] = fy * (1 - fx);
      s.weight[4 * i + 3] = fy * fx;
    }
    for (size_t j = 0; j < row.slow_taps.size(); ++j) {
      const PixelTaps<float>& t = row.slow_taps[j];
      BandScratch::Slow e{static_cast<int32_t>(r), row.slow_pixels[j], {}, {}};
      for (int k = 0; k < 4; ++k) {
        const bool used = k < t.num_taps && t.valid[k];
        const int64_t tap_row = t.offset[k] / row_stride, tap_col = t.offset[k] - tap_row * row_stride;
        e.offset[k] = static_cast<int32_t>(used ? ((tap_row - first) * width + tap_col) * 8 : zero_pixel);
        e.weight[k] = used ? t.weight[k] : 0.f;
      }
      if (t.nan_out) {
        e.offset[0] = static_cast<int32_t>(nan_pixel);
        e.weight[0] = 1.f;
      }
      s.slow.push_back(e);
    }
  }
  const int64_t w8 = width & ~int64_t{7}, below = width * 8;  // below: the next tap row, in floats
  const int64_t blocks_end = channels & ~int64_t{7};
  float* buf = s.pixels8.data();
  for (int64_t c0 = 0; c0 < blocks_end; c0 += 8) {
    for (int64_t tr = 0; tr < tap_rows; ++tr) {
      const float* src = in + c0 * plane_stride + (first + tr) * row_stride;
      float* dst = buf + tr * width * 8;
      for (int64_t ix = 0; ix < w8; ix += 8) {
        __m256 v[8];
        for (int k = 0; k < 8; ++k) v[k] = _mm256_loadu_ps(src + k * plane_stride + ix);
        transpose8x8(v);
        for (int k = 0; k < 8; ++k) _mm256_storeu_ps(dst + (ix + k) * 8, v[k]);
      }
      for (int64_t ix = w8; ix < width; ++ix) {
        for (int k = 0; k < 8; ++k) dst[ix * 8 + k] = src[k * plane_stride + ix];
      }
    }
    for (int64_t r = 0; r < band_rows; ++r) {
      float* o = out + c0 * out_plane_stride + r * out_row_stride;
      const int32_t* off = s.offset.data() + r * width;
      const float* w = s.weight.data() + r * width * 4;
      for (int64_t ix = 0; ix < w8; ix += 8) {
        __m256 v[8];
        for (int k = 0; k < 8; ++k) {
          const float* p = buf + off[ix + k];
          const float* pw = w + (ix + k) * 4;
          __m256 acc = _mm256_mul_ps(_mm256_broadcast_ss(pw), _mm256_loadu_ps(p));
          acc = _mm256_fmadd_ps(_mm256_broadcast_ss(pw + 1), _mm256_loadu_ps(p + 8), acc);
          acc = _mm256_fmadd_ps(_mm256_broadcast_ss(pw + 2), _mm256_loadu_ps(p + below), acc);
          v[k] = _mm256_fmadd_ps(_mm256_broadcast_ss(pw + 3), _mm256_loadu_ps(p + below + 8), acc);
        }
        transpose8x8(v);
        for (int k = 0; k < 8; ++k) _mm256_storeu_ps(o + k * out_plane_stride + ix, v[k]);
      }
      for (int64_t ix = w8; ix < width; ++ix) {
        const float* p = buf + off[ix];
        const float* pw = w + ix * 4;
        for (int k = 0; k < 8; ++k) {
          o[k * out_plane_stride + ix] = pw[0] * p[k] + pw[1] * p[8 + k] + pw[2] * p[below + k] +
                                         pw[3] * p[below + 8 + k];
        }
      }
    }
    for (const BandScratch::Slow& e : s.slow) {
      alignas(32) float v[8];
      __m256 acc = _mm256_mul_ps(_mm256_set1_ps(e.weight[0]), _mm256_loadu_ps(buf + e.offset[0]));
      for (int k = 1; k < 4; ++k) {
        acc = _mm256_fmadd_ps(_mm256_set1_ps(e.weight[k]), _mm256_loadu_ps(buf + e.offset[k]), acc);
      }
      _mm256_store_ps(v, acc);
      float* o = out + c0 * out_plane_stride + e.row * out_row_stride + e.column;
      for (int k = 0; k < 8; ++k) o[k * out_plane_stride] = v[k];
    }
  }
  return blocks_end;
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#else
bool cpu_has_avx2_fma() { return false; }
#endif

// True when every element offset inside one (n, c) plane of t fits in int32 (for SIMD gathers).
bool plane_fits_int32(const at::Tensor& t) {
  const int64_t extent = (t.size(2) - 1) * t.stride(2) + (t.size(3) - 1) * t.stride(3) + t.stride(2) +
                         t.stride(3);
  return extent < std::numeric_limits<int32_t>::max();
}

// Overwrites the slow pixels of one output row of one plane (unit stride along W) with their exact
// value; the vector sweeps leave throw-away values there.
template <typename scalar_t, typename acc_t>
inline void fix_slow_pixels(const RowTaps<acc_t>& row, const scalar_t* plane, scalar_t* out_row) {
  for (size_t k = 0; k < row.slow_pixels.size(); ++k) {
    out_row[row.slow_pixels[k]] = static_cast<scalar_t>(sample_slow(row.slow_taps[k], plane));
  }
}

template <typename scalar_t, typename flow_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& flow, const at::Tensor& out,
                    int64_t interpolation, int64_t padding_mode, bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto xs = x.strides();
  const auto os = out.strides();
  const auto fs = flow.strides();
  const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  const flow_t* flow_ptr = flow.const_data_ptr<flow_t>();
  const bool channels_inner = xs[1] == 1 && os[1] == 1;
  // fp32 rows swept 8 pixels at a time with AVX2 gathers; needs a 2x2 patch inside the plane at the
  // origin (the throw-away reads of slow pixels) and int32 offsets.
  const bool simd = std::is_same_v<scalar_t, float> && cpu_has_avx2_fma() && H >= 2 && W >= 2 &&
                    plane_fits_int32(x);
  const int64_t dx = xs[3], dy = xs[2], dxy = xs[2] + xs[3];

  // channels_last: per pixel, one contiguous sweep over the channels
  auto warp_row_channels_inner = [&](const RowTaps<acc_t>& row, const scalar_t* in, scalar_t* o) {
    for (int64_t ix = 0; ix < W; ++ix) {
      scalar_t* __restrict__ op = o + ix * os[3];
      if (row.slow[ix] >= 0) {
        const PixelTaps<acc_t>& t = row.slow_taps[row.slow[ix]];
        for (int64_t c = 0; c < C; ++c) op[c] = static_cast<scalar_t>(sample_slow(t, in + c));
        continue;
      }
      const acc_t fx = row.frac_x[ix], fy = row.frac_y[ix];
      const acc_t w0 = (1 - fy) * (1 - fx), w1 = (1 - fy) * fx, w2 = fy * (1 - fx), w3 = fy * fx;
      const scalar_t* __restrict__ p0 = in + row.base[ix];
      const scalar_t* __restrict__ p1 = p0 + dx;
      const scalar_t* __restrict__ p2 = p0 + dy;
      const scalar_t* __restrict__ p3 = p2 + dx;
#ifdef VSR_FAST_X86_SIMD
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (simd) {
          blend_channels_avx2(p0, p1, p2, p3, op, C, w0, w1, w2, w3);
          continue;
        }
      }
#endif
      for (int64_t c = 0; c < C; ++c) {
        op[c] = static_cast<scalar_t>(w0 * static_cast<acc_t>(p0[c]) + w1 * static_cast<acc_t>(p1[c]) +
                                      w2 * static_cast<acc_t>(p2[c]) + w3 * static_cast<acc_t>(p3[c]));
      }
    }
  };

  // NCHW: one channel plane along one row
  auto warp_plane_row = [&](const RowTaps<acc_t>& row, const scalar_t* __restrict__ plane,
                            scalar_t* __restrict__ oc) {
#ifdef VSR_FAST_X86_SIMD
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (simd && os[3] == 1) {
        sweep_row_avx2(plane, oc, W, row.base32.data(), row.frac_x.data(), row.frac_y.data(),
                       static_cast<int32_t>(dx), static_cast<int32_t>(dy));
        fix_slow_pixels(row, plane, oc);
        return;
      }
    }
#endif
    for (int64_t ix = 0; ix < W; ++ix) {
      acc_t v;
      if (row.slow[ix] < 0) {
        const acc_t fx = row.frac_x[ix], fy = row.frac_y[ix];
        const scalar_t* p = plane + row.base[ix];
        v = (1 - fy) * ((1 - fx) * static_cast<acc_t>(p[0]) + fx * static_cast<acc_t>(p[dx])) +
            fy * ((1 - fx) * static_cast<acc_t>(p[dy]) + fx * static_cast<acc_t>(p[dxy]));
      } else {
        v = sample_slow(row.slow_taps[row.slow[ix]], plane);
      }
      oc[ix * os[3]] = static_cast<scalar_t>(v);
    }
  };

  // Bands of rows: their taps are computed once, then (NCHW fp32) whole 8-channel blocks go
  // through warp_band_nchw8_avx2; other layouts and dtypes, and the channels left over, row by row.
  const bool band_blocks = simd && dx == 1 && os[3] == 1 && !channels_inner;
  const int64_t bands_per_image = (H + kBandRows - 1) / kBandRows;
  at::parallel_for(0, N * bands_per_image, 1, [&](int64_t begin, int64_t end) {
    // Per-thread buffers that outlive the call: allocating them per call churned the heap enough
    // for glibc to trim and re-fault it (first calls 4.8 ms instead of 1.5 ms).
    thread_local std::vector<RowTaps<acc_t>> rows;
    rows.resize(std::min(kBandRows, H), RowTaps<acc_t>(0));
    for (auto& row : rows) row.resize(W);
#ifdef VSR_FAST_X86_SIMD
    thread_local BandScratch scratch;
#endif
    for (int64_t band = begin; band < end; ++band) {
      const int64_t n = band / bands_per_image, y0 = (band % bands_per_image) * kBandRows;
      const int64_t band_rows = std::min(kBandRows, H - y0);
      for (int64_t r = 0; r < band_rows; ++r) {
        rows[r].compute(flow_ptr + n * fs[0] + (y0 + r) * fs[1], fs[2], fs[3], y0 + r, H, W, xs[2],
                        xs[3], align_corners, padding_mode, interpolation);
      }
      const scalar_t* in = x_ptr + n * xs[0];
      scalar_t* o = out_ptr + n * os[0] + y0 * os[2];
      if (channels_inner) {
        for (int64_t r = 0; r < band_rows; ++r) warp_row_channels_inner(rows[r], in, o + r * os[2]);
        continue;
      }
      int64_t blocked = 0;
#ifdef VSR_FAST_X86_SIMD
      if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
        if (band_blocks) {
          blocked = warp_band_nchw8_avx2(in, xs[1], xs[2], o, os[1], os[2], C, W, rows.data(),
                                         band_rows, scratch);
        }
      }
#endif
      for (int64_t c = blocked; c < C; ++c) {
        for (int64_t r = 0; r < band_rows; ++r) {
          warp_plane_row(rows[r], in + c * xs[1], o + c * os[1] + r * os[2]);
        }
      }
    }
  });
}

void forward_into(const at::Tensor& x, const at::Tensor& flow, const at::Tensor& out,
                  int64_t interpolation, int64_t padding_mode, bool align_corners) {
  check_flow_warp_args("vsr_fast::flow_warp", x, flow, interpolation, padding_mode);
  TORCH_CHECK(x.device().is_cpu(), "vsr_fast::flow_warp: CPU kernel called with x on ", x.device());
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type() && out.device().is_cpu(),
              "vsr_fast::flow_warp: output must match x ", x.sizes(), " ", x.scalar_type(), ", got ",
              out.sizes(), " ", out.scalar_type());
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vsr_fast::flow_warp", [&] {
    with_flow_type<scalar_t>(x, flow, [&](auto flow_zero) {
      forward_kernel<scalar_t, decltype(flow_zero)>(x, flow, out, interpolation, padding_mode,
                                                    align_corners);
    });
  });
}

at::Tensor flow_warp_cpu(const at::Tensor& x, const at::Tensor& flow, int64_t interpolation,
                         int64_t padding_mode, bool align_corners) {
  at::Tensor out = at::empty_like(x);
  forward_into(x, flow, out, interpolation, padding_mode, align_corners);
  return out;
}

// Scatter-and-reduce for one channel plane along one row. `gx` may be null (no grad_x wanted);
// `dflow` (2 per pixel) may be null (no grad_flow wanted).
template <typename scalar_t, typename acc_t>
inline void backward_row_plane(const RowTaps<acc_t>& row, int64_t width, const scalar_t* plane,
                               acc_t* gx, const scalar_t* g, int64_t g_sw, int64_t dx, int64_t dy,
                               acc_t* dflow, bool slow_only) {
  const int64_t dxy = dx + dy;
  for (int64_t ix = 0; ix < width; ++ix) {
    if (slow_only && row.slow[ix] < 0) continue;
    const acc_t go = static_cast<acc_t>(g[ix * g_sw]);
    if (row.slow[ix] < 0) {
      const acc_t fx = row.frac_x[ix], fy = row.frac_y[ix];
      const int64_t b = row.base[ix];
      if (gx) {
        gx[b] += (1 - fy) * (1 - fx) * go;
        gx[b + dx] += (1 - fy) * fx * go;
        gx[b + dy] += fy * (1 - fx) * go;
        gx[b + dxy] += fy * fx * go;
      }
      if (dflow) {
        const acc_t v00 = static_cast<acc_t>(plane[b]), v01 = static_cast<acc_t>(plane[b + dx]);
        const acc_t v10 = static_cast<acc_t>(plane[b + dy]), v11 = static_cast<acc_t>(plane[b + dxy]);
        dflow[2 * ix] += go * row.dpos_x[ix] * ((1 - fy) * (v01 - v00) + fy * (v11 - v10));
        dflow[2 * ix + 1] += go * row.dpos_y[ix] * ((1 - fx) * (v10 - v00) + fx * (v11 - v01));
      }
      continue;
    }
    const PixelTaps<acc_t>& t = row.slow_taps[row.slow[ix]];
    if (t.nan_out && dflow) {
      dflow[2 * ix] = dflow[2 * ix + 1] = static_cast<acc_t>(NAN);
    }
    for (int k = 0; k < t.num_taps; ++k) {
      if (!t.valid[k]) continue;
      if (gx) gx[t.offset[k]] += t.weight[k] * go;
      if (dflow) {
        const acc_t v = static_cast<acc_t>(plane[t.offset[k]]) * go;
        dflow[2 * ix] += t.dweight_dx[k] * v;
        dflow[2 * ix + 1] += t.dweight_dy[k] * v;
      }
    }
  }
}

// grad_x_acc: opmath-typed, strides identical to x's (x is dense here), zero-filled; may be undefined.
// flow_partial: [N, blocks, H, W, 2] opmath-typed; may be undefined.
template <typename scalar_t, typename flow_t>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& flow,
                     const at::Tensor& grad_x_acc, const at::Tensor& flow_partial, int64_t block,
                     int64_t interpolation, int64_t padding_mode, bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t blocks = (C + block - 1) / block;
  const auto xs = x.strides();
  const auto gs = grad_out.strides();
  const auto fs = flow.strides();
  const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
  const scalar_t* g_ptr = grad_out.const_data_ptr<scalar_t>();
  const flow_t* flow_ptr = flow.const_data_ptr<flow_t>();
  acc_t* gx_ptr = grad_x_acc.defined() ? grad_x_acc.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* part_ptr = flow_partial.defined() ? flow_partial.mutable_data_ptr<acc_t>() : nullptr;

  // fp32 NCHW rows (x and grad_out unit stride along W) go through the AVX2 sweep; its pair
  // gathers read a 2x2 patch at the plane origin for slow pixels, so H, W >= 2.
  const bool simd = std::is_same_v<scalar_t, float> && cpu_has_avx2_fma() && xs[3] == 1 &&
                    gs[3] == 1 && H >= 2 && W >= 2 && plane_fits_int32(x);

  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    RowTaps<acc_t> row(W);
    std::vector<acc_t> dflow_x(simd ? W : 0), dflow_y(simd ? W : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, c0 = (task % blocks) * block;
      const int64_t c1 = std::min(C, c0 + block);
      for (int64_t y = 0; y < H; ++y) {
        row.compute(flow_ptr + n * fs[0] + y * fs[1], fs[2], fs[3], y, H, W, xs[2], xs[3],
                    align_corners, padding_mode, interpolation);
        acc_t* dflow = part_ptr ? part_ptr + (task * H + y) * W * 2 : nullptr;
        if (dflow) std::fill(dflow, dflow + 2 * W, acc_t(0));
        if (simd && dflow) {
          std::fill(dflow_x.begin(), dflow_x.end(), acc_t(0));
          std::fill(dflow_y.begin(), dflow_y.end(), acc_t(0));
        }
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t plane_offset = n * xs[0] + c * xs[1];
          const scalar_t* g_row = g_ptr + n * gs[0] + c * gs[1] + y * gs[2];
          acc_t* gx = gx_ptr ? gx_ptr + plane_offset : nullptr;
#ifdef VSR_FAST_X86_SIMD
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (simd) {
              backward_row_avx2(x_ptr + plane_offset, gx, g_row, W, row.base32.data(),
                                row.slow.data(), row.frac_x.data(), row.frac_y.data(),
                                row.dpos_x.data(), row.dpos_y.data(), static_cast<int32_t>(xs[2]),
                                dflow ? dflow_x.data() : nullptr, dflow ? dflow_y.data() : nullptr);
              if (!row.slow_pixels.empty()) {
                backward_row_plane<scalar_t, acc_t>(row, W, x_ptr + plane_offset, gx, g_row, gs[3],
                                                    xs[3], xs[2], dflow, /*slow_only=*/true);
              }
              continue;
            }
          }
#endif
          backward_row_plane<scalar_t, acc_t>(row, W, x_ptr + plane_offset, gx, g_row, gs[3], xs[3],
                                              xs[2], dflow, /*slow_only=*/false);
        }
        if (simd && dflow) {
          for (int64_t ix = 0; ix < W; ++ix) {
            dflow[2 * ix] += dflow_x[ix];
            dflow[2 * ix + 1] += dflow_y[ix];
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> flow_warp_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& flow,
    int64_t interpolation, int64_t padding_mode, bool align_corners, std::array<bool, 2> output_mask) {
  check_flow_warp_backward_args(grad_out, x_in, flow, interpolation, padding_mode);
  TORCH_CHECK(x_in.device().is_cpu(), "vsr_fast::_flow_warp_backward: CPU kernel called with x on ",
              x_in.device());
  // named copies, not structured bindings: C++17 lambdas (torch < 2.10 builds) cannot capture those
  const BackwardSetup setup = setup_flow_warp_backward(x_in, flow, output_mask[0], output_mask[1]);
  const at::Tensor& x = setup.x;
  const at::Tensor& grad_x = setup.grad_x;
  const at::Tensor& grad_flow = setup.grad_flow;
  const bool need_x = setup.need_x, need_flow = setup.need_flow;
  if (!setup.work) return {grad_x, grad_flow};

  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  // Enough (image, channel block) tasks for every thread, but blocks as large as that allows: each
  // block recomputes the taps and adds a grad_flow partial to reduce.
  const int64_t want_tasks = at::get_num_threads();
  const int64_t blocks_per_image = std::min(C, (want_tasks + N - 1) / N);
  const int64_t block = (C + blocks_per_image - 1) / blocks_per_image;
  const int64_t blocks = (C + block - 1) / block;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vsr_fast::_flow_warp_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor grad_x_acc = need_x ? grad_x_accumulator(x, grad_x, acc_type) : at::Tensor();
    at::Tensor partial;
    if (need_flow) partial = at::empty({N, blocks, H, W, 2}, x.options().dtype(acc_type));
    with_flow_type<scalar_t>(x, flow, [&](auto flow_zero) {
      backward_kernel<scalar_t, decltype(flow_zero)>(grad_out, x, flow, grad_x_acc, partial, block,
                                                     interpolation, padding_mode, align_corners);
    });
    if (need_x && !grad_x_acc.is_same(grad_x)) grad_x.copy_(grad_x_acc);
    if (need_flow) grad_flow.copy_(blocks == 1 ? partial.select(1, 0) : partial.sum(1));
  });
  return {grad_x, grad_flow};
}

}  // namespace

void flow_warp_cpu_into(const at::Tensor& x, const at::Tensor& flow, const at::Tensor& out,
                        int64_t interpolation, int64_t padding_mode, bool align_corners) {
  forward_into(x, flow, out, interpolation, padding_mode, align_corners);
}

}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CPU, m) {
  m.impl("flow_warp", &vsr_fast::flow_warp_cpu);
  m.impl("_flow_warp_backward", &vsr_fast::flow_warp_backward_cpu);
}
