// Tap tables of vsr_fast::flow_warp's CPU kernels; private to csrc/cpu/flow_warp.cpp.
//
// The kernels walk the image row by row: a row's taps are computed once with the shared maths of
// vsr_fast/flow_warp.h into a compact table (RowTaps) that every channel then reuses. Pixels whose
// four bilinear taps are all inside the image are fast (a base offset and the two fractions), the
// others, and nearest mode, keep their full PixelTaps in a side table.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_dispatch.h"
#include "vsr_fast/flow_warp.h"

namespace vsr_fast {
namespace cpu_flow_warp {

using flow_warp_math::bilinear_blend;
using flow_warp_math::bilinear_slope_x;
using flow_warp_math::bilinear_slope_y;
using flow_warp_math::bilinear_weights;
using flow_warp_math::BilinearWeights;
using flow_warp_math::kBilinear;
using flow_warp_math::kBorder;
using flow_warp_math::kNearest;
using flow_warp_math::kZeros;
using flow_warp_math::pixel_taps;
using flow_warp_math::PixelTaps;

#ifdef VSR_FAST_X86_SIMD
// Row taps of the propagation mode (bilinear, zeros, align_corners=True, fp32 flow, width > 1) in
// a loop the compiler vectorises. It marks a pixel fast exactly when pixel_taps would (all four taps
// inside: 0 <= pos + floor(flow) <= size - 2 on both axes, NaN failing every comparison) and then
// produces pixel_taps's values: base offset, frac = flow - floor(flow), dpos = 1. Every other pixel
// is left to pixel_taps (tests/test_flow_warp.py compares the two on edge cases).
// The tap's column and row are int32 sums, not float ones (which lose odd columns past 2^24 px):
// floors beyond +-2^30 (NaN too) are slow pixels, so for sizes under kMaxRowTapsSize no sum overflows.
constexpr int64_t kMaxRowTapsSize = int64_t{1} << 30;

__attribute__((target("avx2,fma"))) inline void propagation_row_taps_avx2(
    const float* __restrict__ flow, int64_t flow_sw, int64_t flow_sk, int32_t width, int32_t y,
    int32_t height, int32_t stride_h, int32_t stride_w, int32_t* __restrict__ base,
    int32_t* __restrict__ row0, float* __restrict__ frac_x, float* __restrict__ frac_y,
    int32_t* __restrict__ fast) {
  const int32_t x_last = width - 2, y_last = height - 2;
  constexpr float kLimit = static_cast<float>(kMaxRowTapsSize);
  for (int32_t ix = 0; ix < width; ++ix) {
    const float u = flow[ix * flow_sw], v = flow[ix * flow_sw + flow_sk];
    const float u_floor = floorf(u), v_floor = floorf(v);
    const bool bounded = fabsf(u_floor) <= kLimit && fabsf(v_floor) <= kLimit;
    const int32_t x0 = ix + static_cast<int32_t>(bounded ? u_floor : 0.f);
    const int32_t y0 = y + static_cast<int32_t>(bounded ? v_floor : 0.f);
    const bool ok = bounded && x0 >= 0 && x0 <= x_last && y0 >= 0 && y0 <= y_last;
    row0[ix] = ok ? y0 : 0;
    base[ix] = row0[ix] * stride_h + (ok ? x0 : 0) * stride_w;
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
  std::vector<int32_t> row0;    // the top taps' row (fast pixels; 0 for slow ones)
  std::vector<int32_t> slow;    // -1: fast pixel, else index into `slow_taps`
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
    // its branches (a third of the forward's time went to tap computation while they were not).
    static_switch(
        [&](auto align_c, auto border_c, auto nearest_c) {
          compute_impl<decltype(align_c)::value, decltype(border_c)::value, decltype(nearest_c)::value>(
              flow_row, flow_sw, flow_sk, y, height, width, sh, sw);
        },
        align_corners, padding == kBorder, interpolation == kNearest);
  }

  template <bool kAlignCorners, bool kBorderPadding, bool kNearestTap, typename flow_t>
  void compute_impl(const flow_t* flow_row, int64_t flow_sw, int64_t flow_sk, int64_t y, int64_t height,
                    int64_t width, int64_t sh, int64_t sw) {
    slow_taps.clear();
    slow_pixels.clear();
#ifdef VSR_FAST_X86_SIMD
    if constexpr (kAlignCorners && !kBorderPadding && !kNearestTap && std::is_same_v<flow_t, float> &&
                  std::is_same_v<acc_t, float>) {
      if (width > 1 && width < kMaxRowTapsSize && height < kMaxRowTapsSize && cpu_has_avx2_fma() &&
          offsets_fit_int32(height, width, sh, sw)) {
        propagation_row_taps_avx2(flow_row, flow_sw, flow_sk, static_cast<int32_t>(width),
                                  static_cast<int32_t>(y), static_cast<int32_t>(height),
                                  static_cast<int32_t>(sh), static_cast<int32_t>(sw), base32.data(),
                                  row0.data(), frac_x.data(), frac_y.data(), slow.data());
        for (int64_t ix = 0; ix < width; ++ix) {
          base[ix] = base32[ix];
          dpos_x[ix] = dpos_y[ix] = slow[ix] < 0 ? acc_t(1) : acc_t(0);
          if (slow[ix] < 0) continue;
          classify<kAlignCorners, kBorderPadding, kNearestTap>(flow_row, flow_sw, flow_sk, y, height, width,
                                                               sh, sw, ix);
        }
        return;
      }
    }
#endif
    for (int64_t ix = 0; ix < width; ++ix) {
      classify<kAlignCorners, kBorderPadding, kNearestTap>(flow_row, flow_sw, flow_sk, y, height, width, sh,
                                                           sw, ix);
    }
  }

  static bool offsets_fit_int32(int64_t height, int64_t width, int64_t sh, int64_t sw) {
    return height * sh + width * sw < std::numeric_limits<int32_t>::max();
  }

  template <bool kAlignCorners, bool kBorderPadding, bool kNearestTap, typename flow_t>
  void classify(const flow_t* flow_row, int64_t flow_sw, int64_t flow_sk, int64_t y, int64_t height,
                int64_t width, int64_t sh, int64_t sw, int64_t ix) {
    {
      const flow_t* f = flow_row + ix * flow_sw;
      const PixelTaps<acc_t> t = pixel_taps<acc_t>(
          y, ix, static_cast<acc_t>(f[0]), static_cast<acc_t>(f[flow_sk]), height, width, sh, sw,
          kAlignCorners, kBorderPadding ? kBorder : kZeros, kNearestTap ? kNearest : kBilinear);
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

// True when every element offset inside one (n, c) plane of t fits in int32 (for SIMD gathers).
inline bool plane_fits_int32(const at::Tensor& t) {
  const int64_t extent =
      (t.size(2) - 1) * t.stride(2) + (t.size(3) - 1) * t.stride(3) + t.stride(2) + t.stride(3);
  return extent < std::numeric_limits<int32_t>::max();
}

}  // namespace cpu_flow_warp
}  // namespace vsr_fast
