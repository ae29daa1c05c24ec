// AVX2 + FMA kernels of vsr_fast::flow_warp's CPU forward and backward (fp32); private to
// csrc/cpu/flow_warp.cpp, which calls them only when cpu_has_avx2_fma(). Each computes what the
// scalar code in flow_warp.cpp computes, with the blend of vsr_fast/flow_warp.h, 8 lanes at a time.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "flow_warp_taps.h"

#ifdef VSR_FAST_X86_SIMD

namespace vsr_fast {
namespace cpu_flow_warp {

// The 2x2 patches of 8 pixels (plane offsets base[0..7], rows dy apart). Left and right taps are
// neighbours, so each pair comes with one 64-bit gather lane: half the gathered lanes of 32-bit
// gathers (benchmarks/results/cpu_design_measurements.md).
// The lanes come back in pixel order 0 1 4 5 2 3 6 7.
struct Patches8 {
  __m256 v00, v01, v10, v11;
};

__attribute__((target("avx2,fma"))) inline Patches8 gather_patches_avx2(const float* plane,
                                                                        const int32_t* base, int32_t dy) {
  const double* pairs = reinterpret_cast<const double*>(plane);  // byte address = 4 * index
  const __m128i down = _mm_set1_epi32(dy);
  const __m128i b0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base));
  const __m128i b1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + 4));
  const __m256 t0 = _mm256_castpd_ps(_mm256_i32gather_pd(pairs, b0, 4));
  const __m256 t1 = _mm256_castpd_ps(_mm256_i32gather_pd(pairs, b1, 4));
  const __m256 u0 = _mm256_castpd_ps(_mm256_i32gather_pd(pairs, _mm_add_epi32(b0, down), 4));
  const __m256 u1 = _mm256_castpd_ps(_mm256_i32gather_pd(pairs, _mm_add_epi32(b1, down), 4));
  return {_mm256_shuffle_ps(t0, t1, 0x88), _mm256_shuffle_ps(t0, t1, 0xDD), _mm256_shuffle_ps(u0, u1, 0x88),
          _mm256_shuffle_ps(u0, u1, 0xDD)};
}

// bilinear_blend(bilinear_weights(fx, fy), v00, v01, v10, v11) of vsr_fast/flow_warp.h, 8 pixels at
// a time.
__attribute__((target("avx2,fma"))) inline __m256 bilinear_blend8(__m256 fx, __m256 fy, __m256 v00,
                                                                  __m256 v01, __m256 v10, __m256 v11) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 gx = _mm256_sub_ps(one, fx), gy = _mm256_sub_ps(one, fy);
  __m256 r = _mm256_mul_ps(_mm256_mul_ps(gy, gx), v00);
  r = _mm256_fmadd_ps(_mm256_mul_ps(gy, fx), v01, r);
  r = _mm256_fmadd_ps(_mm256_mul_ps(fy, gx), v10, r);
  return _mm256_fmadd_ps(_mm256_mul_ps(fy, fx), v11, r);
}

// One output row of one plane, fast pixels blended from their 2x2 patches; slow pixels get a
// throw-away value the caller overwrites.
__attribute__((target("avx2,fma"))) inline void sweep_row_avx2(const float* plane, float* out, int64_t width,
                                                               const int32_t* base, const float* frac_x,
                                                               const float* frac_y, int32_t dx, int32_t dy) {
  const __m256i vdx = _mm256_set1_epi32(dx), vdy = _mm256_set1_epi32(dy), vdxy = _mm256_set1_epi32(dx + dy);
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
      const __m256 r = bilinear_blend8(fx, fy, v00, v01, v10, v11);
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
    _mm256_storeu_ps(out + ix, bilinear_blend8(fx, fy, v00, v01, v10, v11));
  }
  for (; ix < width; ++ix) {
    const float* p = plane + base[ix];
    out[ix] = bilinear_blend(bilinear_weights(frac_x[ix], frac_y[ix]), p[0], p[dx], p[dy], p[dx + dy]);
  }
}

// One channels_last pixel: bilinear_blend with the weights `w`, 8 channels at a time.
__attribute__((target("avx2,fma"))) inline void blend_channels_avx2(const float* p0, const float* p1,
                                                                    const float* p2, const float* p3,
                                                                    float* out, int64_t channels,
                                                                    const BilinearWeights<float>& w) {
  const __m256 a = _mm256_set1_ps(w.w[0]), b = _mm256_set1_ps(w.w[1]), c = _mm256_set1_ps(w.w[2]),
               d = _mm256_set1_ps(w.w[3]);
  int64_t i = 0;
  for (; i + 8 <= channels; i += 8) {
    __m256 r = _mm256_mul_ps(a, _mm256_loadu_ps(p0 + i));
    r = _mm256_fmadd_ps(b, _mm256_loadu_ps(p1 + i), r);
    r = _mm256_fmadd_ps(c, _mm256_loadu_ps(p2 + i), r);
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(p3 + i), r));
  }
  for (; i < channels; ++i) out[i] = bilinear_blend(w, p0[i], p1[i], p2[i], p3[i]);
}

// Backward of one NCHW fp32 plane along one row (x stride 1, unit-stride grad_out row): the flow
// gradient is computed 8 pixels at a time with the forward's pair gathers, the grad_x scatter stays
// scalar (taps of neighbouring pixels collide) but with the weights computed in vectors. Slow pixels
// are masked out here; the caller handles them.
__attribute__((target("avx2,fma"))) inline void backward_row_avx2(
    const float* plane, float* gx, const float* g, int64_t width, const int32_t* base, const int32_t* slow,
    const float* frac_x, const float* frac_y, const float* dpos_x, const float* dpos_y, int32_t dy,
    float* dflow_x, float* dflow_y) {
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
      // bilinear_slope_x / bilinear_slope_y, 8 pixels at a time
      const __m256 dx_sum = _mm256_fmadd_ps(fy, _mm256_sub_ps(v11, v10),
                                            _mm256_mul_ps(_mm256_sub_ps(one, fy), _mm256_sub_ps(v01, v00)));
      const __m256 dy_sum = _mm256_fmadd_ps(fx, _mm256_sub_ps(v11, v01),
                                            _mm256_mul_ps(_mm256_sub_ps(one, fx), _mm256_sub_ps(v10, v00)));
      // the and-mask (not a multiply) keeps inf/NaN read for slow pixels out of the sums
      const __m256 ddx =
          _mm256_and_ps(fast, _mm256_mul_ps(_mm256_mul_ps(go, _mm256_loadu_ps(dpos_x + ix)), dx_sum));
      const __m256 ddy =
          _mm256_and_ps(fast, _mm256_mul_ps(_mm256_mul_ps(go, _mm256_loadu_ps(dpos_y + ix)), dy_sum));
      _mm256_storeu_ps(dflow_x + ix, _mm256_add_ps(_mm256_loadu_ps(dflow_x + ix), ddx));
      _mm256_storeu_ps(dflow_y + ix, _mm256_add_ps(_mm256_loadu_ps(dflow_y + ix), ddy));
    }
    if (gx) {  // bilinear_weights(fx, fy) * go
      const __m256 gxw = _mm256_sub_ps(one, fx), gyw = _mm256_sub_ps(one, fy);
      _mm256_store_ps(w[0], _mm256_mul_ps(_mm256_mul_ps(gyw, gxw), go));
      _mm256_store_ps(w[1], _mm256_mul_ps(_mm256_mul_ps(gyw, fx), go));
      _mm256_store_ps(w[2], _mm256_mul_ps(_mm256_mul_ps(fy, gxw), go));
      _mm256_store_ps(w[3], _mm256_mul_ps(_mm256_mul_ps(fy, fx), go));
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
      const BilinearWeights<float> bw = bilinear_weights(fx, fy);
      gx[b] += bw.w[0] * go;
      gx[b + 1] += bw.w[1] * go;
      gx[b + dy] += bw.w[2] * go;
      gx[b + dy + 1] += bw.w[3] * go;
    }
    if (dflow_x) {
      const float v00 = plane[b], v01 = plane[b + 1], v10 = plane[b + dy], v11 = plane[b + dy + 1];
      dflow_x[ix] += go * dpos_x[ix] * bilinear_slope_x(fy, v00, v01, v10, v11);
      dflow_y[ix] += go * dpos_y[ix] * bilinear_slope_y(fx, v00, v01, v10, v11);
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
// transposed back into 8 output rows (faster than the pair gathers: cpu_design_measurements.md in
// benchmarks/results). Slow pixels are done 8 channels at a time too, tap by tap.
// Returns the number of channels done: C rounded down to a multiple of 8.
__attribute__((target("avx2,fma"))) inline int64_t warp_band_nchw8_avx2(
    const float* in, int64_t plane_stride, int64_t row_stride, float* out, int64_t out_plane_stride,
    int64_t out_row_stride, int64_t channels, int64_t width, const RowTaps<float>* rows, int64_t band_rows,
    BandScratch& s) {
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
        if (t.valid[k]) reach(t.row0 + (k >> 1));
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
      // the column, exactly: base = row0 * row_stride + column (unit stride along W here)
      const int64_t x0 = row.base32[ix] - static_cast<int64_t>(row.row0[ix]) * row_stride;
      // slow pixels: a harmless in-buffer read here, the exact value below
      s.offset[i] = fast ? static_cast<int32_t>(((row.row0[ix] - first) * width + x0) * 8) : 0;
      const BilinearWeights<float> b = bilinear_weights(row.frac_x[ix], row.frac_y[ix]);
      for (int k = 0; k < 4; ++k) s.weight[4 * i + k] = b.w[k];
    }
    for (size_t j = 0; j < row.slow_taps.size(); ++j) {
      const PixelTaps<float>& t = row.slow_taps[j];
      BandScratch::Slow e{static_cast<int32_t>(r), row.slow_pixels[j], {}, {}};
      for (int k = 0; k < 4; ++k) {
        const bool used = k < t.num_taps && t.valid[k];
        // from the tap's row and column, not its offset: rows of an expanded x are 0 elements apart
        const int64_t tap_row = t.row0 + (k >> 1), tap_col = t.col0 + (k & 1);
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
          o[k * out_plane_stride + ix] =
              pw[0] * p[k] + pw[1] * p[8 + k] + pw[2] * p[below + k] + pw[3] * p[below + 8 + k];
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

}  // namespace cpu_flow_warp
}  // namespace vsr_fast

#endif  // VSR_FAST_X86_SIMD
