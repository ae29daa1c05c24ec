// CPU kernels of vsr_fast::flow_warp and vsr_fast::_flow_warp_backward: the drivers and the
// registration. Tap tables are in flow_warp_taps.h, the AVX2 kernels in flow_warp_simd.h.
//
// * Channels with unit stride (channels_last): per pixel, one contiguous sweep over the channels.
// * Otherwise (NCHW): per channel, one sweep along the row. Sweeping many planes per pixel instead
//   thrashes L1: planes of a VSR feature map are often a multiple of 1 KiB apart, so a dozen of them
//   land in the same cache sets.
// Fast pixels (all four taps inside the image) take a branch-free path; the others are exact
// per-tap sums over their PixelTaps.
//
// Forward parallelises over bands of rows. Backward parallelises over (image, channel block) so each
// task owns the grad_x planes it scatters into: no atomics and no races. grad_flow partial sums of
// each channel block are reduced afterwards.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"
#include "flow_warp_simd.h"
#include "flow_warp_taps.h"
#include "vsr_fast/flow_warp.h"

namespace vsr_fast {
namespace {

using namespace cpu_flow_warp;

// Output rows per forward task: the taps of a band are computed together and, for NCHW fp32, its
// input rows are transposed into 8-channel pixels once per 8-channel block (see forward_kernel).
constexpr int64_t kBandRows = 16;

template <typename scalar_t, typename acc_t>
inline acc_t sample_slow(const PixelTaps<acc_t>& t, const scalar_t* in) {
  if (t.nan_out) return static_cast<acc_t>(NAN);
  acc_t v = acc_t(0);
  for (int k = 0; k < t.num_taps; ++k) {
    if (t.valid[k]) v += t.weight[k] * static_cast<acc_t>(in[t.offset[k]]);
  }
  return v;
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
void forward_kernel(const at::Tensor& x, const at::Tensor& flow, const at::Tensor& out, int64_t interpolation,
                    int64_t padding_mode, bool align_corners) {
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
  const bool simd =
      std::is_same_v<scalar_t, float> && cpu_has_avx2_fma() && H >= 2 && W >= 2 && plane_fits_int32(x);
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
      const BilinearWeights<acc_t> b = bilinear_weights(row.frac_x[ix], row.frac_y[ix]);
      const scalar_t* __restrict__ p0 = in + row.base[ix];
      const scalar_t* __restrict__ p1 = p0 + dx;
      const scalar_t* __restrict__ p2 = p0 + dy;
      const scalar_t* __restrict__ p3 = p2 + dx;
#ifdef VSR_FAST_X86_SIMD
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (simd) {
          blend_channels_avx2(p0, p1, p2, p3, op, C, b);
          continue;
        }
      }
#endif
      for (int64_t c = 0; c < C; ++c) {
        op[c] = static_cast<scalar_t>(bilinear_blend(b, static_cast<acc_t>(p0[c]), static_cast<acc_t>(p1[c]),
                                                     static_cast<acc_t>(p2[c]), static_cast<acc_t>(p3[c])));
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
        const scalar_t* p = plane + row.base[ix];
        v = bilinear_blend(bilinear_weights(row.frac_x[ix], row.frac_y[ix]), static_cast<acc_t>(p[0]),
                           static_cast<acc_t>(p[dx]), static_cast<acc_t>(p[dy]), static_cast<acc_t>(p[dxy]));
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
    // for glibc to trim and re-fault it (benchmarks/results/cpu_design_measurements.md).
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
        rows[r].compute(flow_ptr + n * fs[0] + (y0 + r) * fs[1], fs[2], fs[3], y0 + r, H, W, xs[2], xs[3],
                        align_corners, padding_mode, interpolation);
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
          blocked =
              warp_band_nchw8_avx2(in, xs[1], xs[2], o, os[1], os[2], C, W, rows.data(), band_rows, scratch);
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

void forward_into(const at::Tensor& x, const at::Tensor& flow, const at::Tensor& out, int64_t interpolation,
                  int64_t padding_mode, bool align_corners) {
  check_flow_warp_args("vsr_fast::flow_warp", x, flow, interpolation, padding_mode);
  TORCH_CHECK(x.device().is_cpu(), "vsr_fast::flow_warp: CPU kernel called with x on ", x.device());
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type() && out.device().is_cpu(),
              "vsr_fast::flow_warp: output must match x ", x.sizes(), " ", x.scalar_type(), ", got ",
              out.sizes(), " ", out.scalar_type());
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vsr_fast::flow_warp", [&] {
    with_flow_type<scalar_t>(x, flow, [&](auto flow_zero) {
      forward_kernel<scalar_t, decltype(flow_zero)>(x, flow, out, interpolation, padding_mode, align_corners);
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
inline void backward_row_plane(const RowTaps<acc_t>& row, int64_t width, const scalar_t* plane, acc_t* gx,
                               const scalar_t* g, int64_t g_sw, int64_t dx, int64_t dy, acc_t* dflow,
                               bool slow_only) {
  const int64_t dxy = dx + dy;
  for (int64_t ix = 0; ix < width; ++ix) {
    if (slow_only && row.slow[ix] < 0) continue;
    const acc_t go = static_cast<acc_t>(g[ix * g_sw]);
    if (row.slow[ix] < 0) {
      const acc_t fx = row.frac_x[ix], fy = row.frac_y[ix];
      const int64_t b = row.base[ix];
      if (gx) {
        const BilinearWeights<acc_t> w = bilinear_weights(fx, fy);
        gx[b] += w.w[0] * go;
        gx[b + dx] += w.w[1] * go;
        gx[b + dy] += w.w[2] * go;
        gx[b + dxy] += w.w[3] * go;
      }
      if (dflow) {
        const acc_t v00 = static_cast<acc_t>(plane[b]), v01 = static_cast<acc_t>(plane[b + dx]);
        const acc_t v10 = static_cast<acc_t>(plane[b + dy]), v11 = static_cast<acc_t>(plane[b + dxy]);
        dflow[2 * ix] += go * row.dpos_x[ix] * bilinear_slope_x(fy, v00, v01, v10, v11);
        dflow[2 * ix + 1] += go * row.dpos_y[ix] * bilinear_slope_y(fx, v00, v01, v10, v11);
      }
      continue;
    }
    // (a NaN/inf position, t.nan_out, has no valid tap: its flow gradient stays 0)
    const PixelTaps<acc_t>& t = row.slow_taps[row.slow[ix]];
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
  const bool simd = std::is_same_v<scalar_t, float> && cpu_has_avx2_fma() && xs[3] == 1 && gs[3] == 1 &&
                    H >= 2 && W >= 2 && plane_fits_int32(x);

  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    RowTaps<acc_t> row(W);
    std::vector<acc_t> dflow_x(simd ? W : 0), dflow_y(simd ? W : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, c0 = (task % blocks) * block;
      const int64_t c1 = std::min(C, c0 + block);
      for (int64_t y = 0; y < H; ++y) {
        row.compute(flow_ptr + n * fs[0] + y * fs[1], fs[2], fs[3], y, H, W, xs[2], xs[3], align_corners,
                    padding_mode, interpolation);
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
              backward_row_avx2(x_ptr + plane_offset, gx, g_row, W, row.base32.data(), row.slow.data(),
                                row.frac_x.data(), row.frac_y.data(), row.dpos_x.data(), row.dpos_y.data(),
                                static_cast<int32_t>(xs[2]), dflow ? dflow_x.data() : nullptr,
                                dflow ? dflow_y.data() : nullptr);
              if (!row.slow_pixels.empty()) {
                backward_row_plane<scalar_t, acc_t>(row, W, x_ptr + plane_offset, gx, g_row, gs[3], xs[3],
                                                    xs[2], dflow, /*slow_only=*/true);
              }
              continue;
            }
          }
#endif
          backward_row_plane<scalar_t, acc_t>(row, W, x_ptr + plane_offset, gx, g_row, gs[3], xs[3], xs[2],
                                              dflow, /*slow_only=*/false);
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

std::tuple<at::Tensor, at::Tensor> flow_warp_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x_in,
                                                          const at::Tensor& flow, int64_t interpolation,
                                                          int64_t padding_mode, bool align_corners,
                                                          std::array<bool, 2> output_mask) {
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

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "vsr_fast::_flow_warp_backward", [&] {
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
