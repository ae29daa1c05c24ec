// 3x3 convolutions (stride 1, zero padding 1, bias) by Winograd's minimal filtering F(4x4, 3x3)
// (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), float32 on NHWC
// tensors, AVX2 + FMA, with the trunk's and the tail's epilogues fused into the output transform.
// Private to csrc/cpu/.
//
// Why: a direct float32 convolution is bound by the CPU's FMA peak, and oneDNN's NHWC kernels
// already run within ~15% of it on the AVX2 machine this was written on (64->64 at 64x112, 2
// threads: 132 GFLOP/s NHWC, 115 NCHW, 117-119 in oneDNN's blocked layout), so neither layout nor
// fusion can make the trunk much faster. F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input
// tile with 36 multiplications per (input, output) channel pair instead of 144: 4x fewer. ATen's
// oneDNN convolutions offer no Winograd algorithm (oneDNN's own runs only on AVX-512 machines).
//
// Accuracy (float32): the weights are transformed in float64 and rounded once; the input and output
// transforms have coefficients from 1/8 to 8, which amplify rounding. Measured against a float64
// convolution (64->64, 64x112, unit-variance input, He-scaled weights): max error 1.9e-5 where
// oneDNN's direct convolution has 8.5e-6 (see the choice of points below). Through a whole BasicVSR
// with the REDS4 weights (10 frames of 64x112) the standard points gave 7.1e-6 off the reference.
// The tests hold it to the float32_chain tolerance like every convolution chain.
//
// Layout of one call, per block of tiles (one block per parallel task, so its scratch stays in L2):
//   V[xi][t][c]  = (B^T d B)[xi]      input transform of tile t's 6x6 patch, channel c
//   M[xi][t][k]  = sum_c V[xi][t][c] U[xi][c][k]   36 small GEMMs (U: transformed weights)
//   out[tile t]  = epilogue(A^T M A + bias)        output transform, written into NHWC
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_dispatch.h"
#include "onednn_conv.h"

namespace vsr_fast {
namespace winograd {

constexpr int kTile = 4;     // output tile edge (m)
constexpr int kAlpha = 6;    // input tile edge (m + r - 1)
constexpr int kPoints = 36;  // kAlpha^2 transform points (xi)

enum class Epilogue {
  kLeakyRelu,  // out = leaky_relu(conv + bias, slope)
  kRelu,       // out = relu(conv + bias)
  kAccumulate  // out = out + conv + bias (the residual sum, in place)
};

// Whether the Winograd convolutions run at all here: AVX2 + FMA present, VSR_FAST_CPU_CONV not
// "onednn" (read per call, so benchmarks can time both paths in one process). An op asks once per
// call, so that one answer holds for all of its convolutions.
inline bool enabled() {
  const char* setting = std::getenv("VSR_FAST_CPU_CONV");
  return cpu_has_avx2_fma() && !(setting != nullptr && std::string(setting) == "onednn");
}

// Whether conv3x3 takes this convolution: float32 NHWC x with input channels, output channels a
// multiple of 8 (the vector width).
inline bool suits(const at::Tensor& x, int64_t out_channels) {
  return x.scalar_type() == at::kFloat && x.size(1) > 0 && out_channels > 0 && out_channels % 8 == 0 &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline bool usable(const at::Tensor& x, int64_t out_channels) { return enabled() && suits(x, out_channels); }

// U[xi][c][k] = (G g G^T)[xi] for the weight slice g = weight[k, c] ([K, C, 3, 3], any strides),
// computed in float64 and rounded once; returned as a dense float32 [36, C, K] tensor.
inline at::Tensor transform_weight(const at::Tensor& weight) {
  // G of the points below (input_transform_1d)
  static const double G[kAlpha][3] = {{1, 0, 0},
                                      {-1.0 / 3, -1.0 / 3, -1.0 / 3},
                                      {1.0 / 3, -1.0 / 3, 1.0 / 3},
                                      {1.0 / 15, 2.0 / 15, 4.0 / 15},
                                      {-16.0 / 15, 8.0 / 15, -4.0 / 15},
                                      {0, 0, 1}};
  const at::Tensor g = weight.to(at::kDouble).contiguous();
  const int64_t K = g.size(0), C = g.size(1);
  at::Tensor u = at::empty({kPoints, C, K}, weight.options().dtype(at::kFloat));
  const double* src = g.const_data_ptr<double>();
  float* dst = u.mutable_data_ptr<float>();
  // by input channel, in parallel: each task writes its own rows u[xi][c][*] (contiguous in k)
  at::parallel_for(0, C, 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t k = 0; k < K; ++k) {
        const double* w = src + (k * C + c) * 9;
        double gw[kAlpha][3];  // G g
        for (int i = 0; i < kAlpha; ++i) {
          for (int j = 0; j < 3; ++j) gw[i][j] = G[i][0] * w[j] + G[i][1] * w[3 + j] + G[i][2] * w[6 + j];
        }
        for (int i = 0; i < kAlpha; ++i) {
          for (int j = 0; j < kAlpha; ++j) {
            const double v = gw[i][0] * G[j][0] + gw[i][1] * G[j][1] + gw[i][2] * G[j][2];
            dst[((i * kAlpha + j) * C + c) * K + k] = static_cast<float>(v);
          }
        }
      }
    }
  });
  return u;
}

// transform_weight(weight), cached with oneDNN's packed weights (onednn_conv.h: handed out again
// only while the weight's bytes are unchanged).
inline at::Tensor packed_weight(const at::Tensor& weight) {
  constexpr int64_t kWinogradF4x4 = 1;
  return onednn::packed_weights().get(weight, kWinogradF4x4, transform_weight);
}

#ifdef VSR_FAST_X86_SIMD

// The transforms interpolate at 0, 1, -1, 2, -1/2 and infinity rather than the usual 0, +-1, +-2,
// infinity: the same cost, and on the 64->64 case above a third of the float32 error (max 1.9e-5
// against 5.8e-5, rms 1.6e-6 against 2.4e-6; mixing a point p with -1/p is what Barabasz et al.,
// "Error Analysis and Improving the Accuracy of Winograd Convolution", 2020, recommend).
//   B^T rows: 1 3/2 -2 -3/2 1 0 / 0 -1 -5/2 -1/2 1 0 / 0 1 1/2 -5/2 1 0 /
//             0 -1/2 -1 1/2 1 0 / 0 2 -1 -2 1 0 / 0 1 3/2 -2 -3/2 1
//   G rows:   1 0 0 / -1/3 -1/3 -1/3 / 1/3 -1/3 1/3 / 1/15 2/15 4/15 / -16/15 8/15 -4/15 / 0 0 1
//   A^T rows: 1 1 1 1 1 0 / 0 1 -1 2 -1/2 0 / 0 1 1 4 1/4 0 / 0 1 -1 8 -1/8 1
// (tests/test_residual_trunk.py checks the result against the reference convolution, not these.)

// B^T d for six values, in place.
__attribute__((target("avx2,fma"))) inline void input_transform_1d(__m256 d[kAlpha]) {
  const __m256 two = _mm256_set1_ps(2.f), half = _mm256_set1_ps(0.5f);
  const __m256 three_halves = _mm256_set1_ps(1.5f), five_halves = _mm256_set1_ps(2.5f);
  const __m256 d4m2 = _mm256_sub_ps(d[4], d[2]), d3m1 = _mm256_sub_ps(d[3], d[1]);
  const __m256 v0 =
      _mm256_fnmadd_ps(three_halves, d3m1, _mm256_fnmadd_ps(two, d[2], _mm256_add_ps(d[0], d[4])));
  const __m256 v1 =
      _mm256_fnmadd_ps(five_halves, d[2], _mm256_fnmadd_ps(half, d[3], _mm256_sub_ps(d[4], d[1])));
  const __m256 v2 =
      _mm256_fmadd_ps(half, d[2], _mm256_fnmadd_ps(five_halves, d[3], _mm256_add_ps(d[4], d[1])));
  const __m256 v3 = _mm256_fmadd_ps(half, d3m1, d4m2);
  const __m256 v4 = _mm256_fnmadd_ps(two, d3m1, d4m2);
  const __m256 v5 = _mm256_fmadd_ps(three_halves, _mm256_sub_ps(d[2], d[4]),
                                    _mm256_fnmadd_ps(two, d[3], _mm256_add_ps(d[1], d[5])));
  d[0] = v0, d[1] = v1, d[2] = v2, d[3] = v3, d[4] = v4, d[5] = v5;
}

// A^T m: six values into four.
__attribute__((target("avx2,fma"))) inline void output_transform_1d(const __m256 m[kAlpha], __m256 y[kTile]) {
  const __m256 a = _mm256_add_ps(m[1], m[2]), b = _mm256_sub_ps(m[1], m[2]);
  y[0] = _mm256_add_ps(_mm256_add_ps(m[0], a), _mm256_add_ps(m[3], m[4]));
  y[1] = _mm256_fnmadd_ps(_mm256_set1_ps(0.5f), m[4], _mm256_fmadd_ps(_mm256_set1_ps(2.f), m[3], b));
  y[2] = _mm256_fmadd_ps(_mm256_set1_ps(0.25f), m[4], _mm256_fmadd_ps(_mm256_set1_ps(4.f), m[3], a));
  y[3] = _mm256_add_ps(
      _mm256_fnmadd_ps(_mm256_set1_ps(0.125f), m[4], _mm256_fmadd_ps(_mm256_set1_ps(8.f), m[3], b)), m[5]);
}

// Where tiles and the input live; one per call.
struct Geometry {
  int64_t n, h, w, C, K;
  int64_t tiles_y, tiles_x, tiles;
};

// One tile's 6x6 patch of 8 channels (lanes past the channel count masked off), loaded row by row
// with each row transformed along x as it arrives (d B), then transformed along y (B^T d B) and
// stored at dst[xi * ld_point]. Inside: no tap of the patch falls outside the image.
template <bool Inside>
__attribute__((target("avx2,fma"), always_inline)) inline void input_transform_tile(
    const float* image, int64_t origin, int64_t pixel_stride, int64_t row_stride, int64_t rows_in,
    int64_t first_col, int64_t cols_in, bool full, __m256i mask, float* dst, int64_t ld_point) {
  __m256 d[kAlpha][kAlpha];
  for (int i = 0; i < kAlpha; ++i) {
    for (int j = 0; j < kAlpha; ++j) {
      const bool in = Inside || ((rows_in >> i) & 1 && j >= first_col && j < cols_in);
      if (!in) {
        d[i][j] = _mm256_setzero_ps();
        continue;
      }
      const float* p = image + (origin + i * row_stride + j * pixel_stride);
      d[i][j] = full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask);
    }
    input_transform_1d(d[i]);  // along x: d B
  }
  for (int j = 0; j < kAlpha; ++j) {  // along y: B^T (d B)
    __m256 col[kAlpha];
    for (int i = 0; i < kAlpha; ++i) col[i] = d[i][j];
    input_transform_1d(col);
    for (int i = 0; i < kAlpha; ++i) {
      float* out = dst + (i * kAlpha + j) * ld_point;
      if (full) {
        _mm256_storeu_ps(out, col[i]);
      } else {
        _mm256_maskstore_ps(out, mask, col[i]);
      }
    }
  }
}

// V[xi][t][c] for the tiles [t0, t0 + count), all channels, 8 at a time; ldv_point floats between
// transform points. A channel count that is not a multiple of 8 loads and stores its last lanes
// masked.
__attribute__((target("avx2,fma"))) inline void input_transform_block(const Geometry& g, const float* x,
                                                                      int64_t t0, int64_t count, float* V,
                                                                      int64_t ldv_point) {
  // locals, not g's fields: the stores through V could alias g, so the compiler would reload them
  const int64_t C = g.C, h = g.h, w = g.w, tiles_x = g.tiles_x, per_image = g.tiles_y * g.tiles_x;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t t = 0; t < count; ++t) {
    const int64_t tile = t0 + t;
    const int64_t img = tile / per_image, rest = tile % per_image;
    const int64_t y0 = (rest / tiles_x) * kTile - 1, x0 = (rest % tiles_x) * kTile - 1;
    const bool inside = y0 >= 0 && y0 + kAlpha <= h && x0 >= 0 && x0 + kAlpha <= w;
    int64_t rows_in = 0;  // bit i: patch row i lies in the image
    for (int i = 0; i < kAlpha; ++i) rows_in |= int64_t{y0 + i >= 0 && y0 + i < h} << i;
    const int64_t first_col = std::max<int64_t>(0, -x0), cols_in = std::min<int64_t>(kAlpha, w - x0);
    // offset of the patch's top-left tap from the image's first pixel: negative at the top and left
    // edges, where only the in-image taps are read (and pointed to)
    const float* image = x + img * h * w * C;
    const int64_t origin = (y0 * w + x0) * C;
    float* dst = V + t * C;
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
      const int64_t lanes = std::min<int64_t>(8, C - c0);
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lanes)), lane);
      if (inside) {
        input_transform_tile<true>(image + c0, origin, C, w * C, rows_in, first_col, cols_in, lanes == 8,
                                   mask, dst + c0, ldv_point);
      } else {
        input_transform_tile<false>(image + c0, origin, C, w * C, rows_in, first_col, cols_in, lanes == 8,
                                    mask, dst + c0, ldv_point);
      }
    }
  }
}

template <int NV>
__attribute__((target("avx2,fma"), always_inline)) inline void fma_row(const float* vr, __m256 b0, __m256 b1,
                                                                       __m256& lo, __m256& hi) {
  const __m256 a = _mm256_broadcast_ss(vr);
  lo = _mm256_fmadd_ps(a, b0, lo);
  if constexpr (NV == 2) hi = _mm256_fmadd_ps(a, b1, hi);
}

template <int NV>
__attribute__((target("avx2,fma"), always_inline)) inline void store_row(float* mr, __m256 lo, __m256 hi) {
  _mm256_storeu_ps(mr, lo);
  if constexpr (NV == 2) _mm256_storeu_ps(mr + 8, hi);
}

template <int R, int NV>
__attribute__((target("avx2,fma"))) inline void gemm_micro(const float* v, int64_t ldv, const float* u,
                                                           int64_t ldu, float* m, int64_t ldm, int64_t C) {
  static_assert(R >= 1 && R <= 6 && (NV == 1 || NV == 2), "gemm_micro: 1-6 rows of 8 or 16 columns");
  const __m256 zero = _mm256_setzero_ps();
  __m256 a00 = zero, a01 = zero, a10 = zero, a11 = zero, a20 = zero, a21 = zero;
  __m256 a30 = zero, a31 = zero, a40 = zero, a41 = zero, a50 = zero, a51 = zero;
  for (int64_t c = 0; c < C; ++c) {
    const __m256 b0 = _mm256_loadu_ps(u + c * ldu);
    const __m256 b1 = NV == 2 ? _mm256_loadu_ps(u + c * ldu + 8) : zero;
    fma_row<NV>(v + c, b0, b1, a00, a01);
    if constexpr (R > 1) fma_row<NV>(v + ldv + c, b0, b1, a10, a11);
    if constexpr (R > 2) fma_row<NV>(v + 2 * ldv + c, b0, b1, a20, a21);
    if constexpr (R > 3) fma_row<NV>(v + 3 * ldv + c, b0, b1, a30, a31);
    if constexpr (R > 4) fma_row<NV>(v + 4 * ldv + c, b0, b1, a40, a41);
    if constexpr (R > 5) fma_row<NV>(v + 5 * ldv + c, b0, b1, a50, a51);
  }
  store_row<NV>(m, a00, a01);
  if constexpr (R > 1) store_row<NV>(m + ldm, a10, a11);
  if constexpr (R > 2) store_row<NV>(m + 2 * ldm, a20, a21);
  if constexpr (R > 3) store_row<NV>(m + 3 * ldm, a30, a31);
  if constexpr (R > 4) store_row<NV>(m + 4 * ldm, a40, a41);
  if constexpr (R > 5) store_row<NV>(m + 5 * ldm, a50, a51);
}

template <int NV>
__attribute__((target("avx2,fma"))) inline void gemm_rows(int64_t rows, const float* v, int64_t ldv,
                                                          const float* u, int64_t ldu, float* m, int64_t ldm,
                                                          int64_t C) {
  using Micro = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t);
  static constexpr Micro kLastRows[6] = {nullptr,           gemm_micro<1, NV>, gemm_micro<2, NV>,
                                         gemm_micro<3, NV>, gemm_micro<4, NV>, gemm_micro<5, NV>};
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) gemm_micro<6, NV>(v + r * ldv, ldv, u, ldu, m + r * ldm, ldm, C);
  if (r < rows) kLastRows[rows - r](v + r * ldv, ldv, u, ldu, m + r * ldm, ldm, C);
}

// Out tiles [t0, t0 + count), all output channels, 8 at a time: A^T M A + bias, the epilogue, and
// the store of the pixels that exist (tiles at the right and bottom edges may overhang).
template <Epilogue E>
__attribute__((target("avx2,fma"))) inline void output_transform_block(const Geometry& g, const float* M,
                                                                       int64_t ldm_point, int64_t t0,
                                                                       int64_t count, const float* bias,
                                                                       float slope, float* out) {
  // locals, not g's fields: the stores through out could alias g, so the compiler would reload them
  const int64_t K = g.K, h = g.h, w = g.w, tiles_x = g.tiles_x, per_image = g.tiles_y * g.tiles_x;
  const __m256 slope_v = _mm256_set1_ps(slope), zero = _mm256_setzero_ps();
  for (int64_t t = 0; t < count; ++t) {
    const int64_t tile = t0 + t;
    const int64_t img = tile / per_image, rest = tile % per_image;
    const int64_t y0 = (rest / tiles_x) * kTile, x0 = (rest % tiles_x) * kTile;
    const int64_t ny = std::min<int64_t>(kTile, h - y0), nx = std::min<int64_t>(kTile, w - x0);
    float* tile_out = out + ((img * h + y0) * w + x0) * K;
    for (int64_t k0 = 0; k0 < K; k0 += 8) {
      const __m256 bias_v = _mm256_loadu_ps(bias + k0);
      __m256 rows[kAlpha][kTile];  // M A, row by row
      for (int i = 0; i < kAlpha; ++i) {
        __m256 m[kAlpha];
        for (int j = 0; j < kAlpha; ++j)
          m[j] = _mm256_loadu_ps(M + (i * kAlpha + j) * ldm_point + t * K + k0);
        output_transform_1d(m, rows[i]);
      }
      for (int j = 0; j < nx; ++j) {
        __m256 col[kAlpha], y[kTile];  // A^T (M A), column j
        for (int i = 0; i < kAlpha; ++i) col[i] = rows[i][j];
        output_transform_1d(col, y);
        for (int i = 0; i < ny; ++i) {
          float* p = tile_out + (i * w + j) * K + k0;
          __m256 r = _mm256_add_ps(y[i], bias_v);
          if constexpr (E == Epilogue::kLeakyRelu) {
            r = _mm256_blendv_ps(_mm256_mul_ps(r, slope_v), r, _mm256_cmp_ps(r, zero, _CMP_GT_OQ));
          } else if constexpr (E == Epilogue::kRelu) {
            r = _mm256_max_ps(zero, r);  // maxps returns its second operand for NaN: NaN stays NaN, as relu
          } else {
            r = _mm256_add_ps(_mm256_loadu_ps(p), r);
          }
          _mm256_storeu_ps(p, r);
        }
      }
    }
  }
}

#endif  // VSR_FAST_X86_SIMD

// out = epilogue(conv3x3(x) + bias): x NHWC float32 [N, C, H, W] (channels_last dense), u the
// transformed weight of transform_weight ([36, C, K]), bias [K] (dense), out NHWC float32
// [N, K, H, W], not overlapping x. Only where usable(x, K).
inline void conv3x3(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias, const at::Tensor& out,
                    Epilogue epilogue, float slope = 0.f) {
  // What the kernel reads and writes blindly; the callers' argument checks make it so, these keep it so.
  const auto cl = at::MemoryFormat::ChannelsLast;
  TORCH_INTERNAL_ASSERT(x.scalar_type() == at::kFloat && x.dim() == 4 && x.is_contiguous(cl));
  TORCH_INTERNAL_ASSERT(u.scalar_type() == at::kFloat && u.dim() == 3 && u.size(0) == kPoints &&
                        u.size(1) == x.size(1) && u.size(2) % 8 == 0 && u.is_contiguous());
  TORCH_INTERNAL_ASSERT(bias.scalar_type() == at::kFloat && bias.numel() == u.size(2) &&
                        bias.is_contiguous());
  TORCH_INTERNAL_ASSERT(out.scalar_type() == at::kFloat && out.is_contiguous(cl) &&
                        out.size(0) == x.size(0) && out.size(1) == u.size(2) && out.size(2) == x.size(2) &&
                        out.size(3) == x.size(3));
  TORCH_INTERNAL_ASSERT(!out.is_alias_of(x));
#ifdef VSR_FAST_X86_SIMD
  Geometry g;
  g.n = x.size(0), g.C = x.size(1), g.h = x.size(2), g.w = x.size(3), g.K = u.size(2);
  g.tiles_y = (g.h + kTile - 1) / kTile, g.tiles_x = (g.w + kTile - 1) / kTile;
  g.tiles = g.n * g.tiles_y * g.tiles_x;
  // Tiles per task: V and M of one block ((C + K) * 36 floats per tile) within ~384 KB of L2.
  const int64_t per_tile_bytes = (g.C + g.K) * kPoints * int64_t{sizeof(float)};
  const int64_t most = std::max<int64_t>(6, std::min<int64_t>(48, (384 << 10) / per_tile_bytes / 6 * 6));
  // Whole rounds of blocks for the threads, tiles spread evenly over them (sizes differ by one at
  // most): 25 blocks of 18 on 2 threads left one thread a block more than the other.
  int64_t blocks = (g.tiles + most - 1) / most;
  const int64_t threads = at::get_num_threads();
  if (blocks > 1 && threads > 1) blocks = (blocks + threads - 1) / threads * threads;
  const int64_t block = (g.tiles + blocks - 1) / blocks;  // the largest: scratch size and strides
  const float* xp = x.const_data_ptr<float>();
  const float* up = u.const_data_ptr<float>();
  const float* bp = bias.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // scratch kept by each thread across calls: no allocation per layer once warm
    thread_local std::vector<float> scratch;
    const size_t need = static_cast<size_t>(kPoints * block * (g.C + g.K));
    if (scratch.size() < need) scratch.resize(need);
    float* V = scratch.data();
    float* M = V + kPoints * block * g.C;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t t0 = b * g.tiles / blocks, count = (b + 1) * g.tiles / blocks - t0;
      const int64_t ldv_point = block * g.C, ldm_point = block * g.K;
      input_transform_block(g, xp, t0, count, V, ldv_point);
      for (int xi = 0; xi < kPoints; ++xi) {
        const float* v = V + xi * ldv_point;
        const float* uxi = up + xi * g.C * g.K;
        float* m = M + xi * ldm_point;
        int64_t k0 = 0;
        for (; k0 + 16 <= g.K; k0 += 16) gemm_rows<2>(count, v, g.C, uxi + k0, g.K, m + k0, g.K, g.C);
        if (k0 < g.K) gemm_rows<1>(count, v, g.C, uxi + k0, g.K, m + k0, g.K, g.C);
      }
      switch (epilogue) {
        case Epilogue::kLeakyRelu:
          output_transform_block<Epilogue::kLeakyRelu>(g, M, ldm_point, t0, count, bp, slope, op);
          break;
        case Epilogue::kRelu:
          output_transform_block<Epilogue::kRelu>(g, M, ldm_point, t0, count, bp, slope, op);
          break;
        case Epilogue::kAccumulate:
          output_transform_block<Epilogue::kAccumulate>(g, M, ldm_point, t0, count, bp, slope, op);
          break;
      }
    }
  });
#else
  TORCH_CHECK(false, "vsr_fast: the Winograd convolution needs an x86 build with AVX2");
#endif
}

// leaky_relu(conv3x3(x) + bias) for an NHWC float32 (or, through oneDNN, bfloat16) x: by Winograd
// if `winograd` (the caller's usable(x, out channels), asked once per op call so that one setting
// holds for all its convolutions), else oneDNN's NHWC convolution with the post-op fused. A new
// NHWC tensor.
inline at::Tensor conv3x3_leaky_relu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                     double slope, bool winograd) {
  if (winograd) {
    at::Tensor out = at::empty({x.size(0), weight.size(0), x.size(2), x.size(3)},
                               x.options().memory_format(at::MemoryFormat::ChannelsLast));
    conv3x3(x, packed_weight(weight), bias.contiguous(), out, Epilogue::kLeakyRelu,
            static_cast<float>(slope));
    return out;
  }
  c10::List<std::optional<at::Scalar>> scalars;
  scalars.push_back(at::Scalar(slope));
  return onednn::conv_unary(x, onednn::packed_weights().get(weight, x.size(0), x.size(2), x.size(3)), bias,
                            "leaky_relu", scalars);
}

}  // namespace winograd
}  // namespace vsr_fast
