// Sampling maths of vsr_fast::modulated_deform_conv (DCNv2), shared by the CPU and CUDA kernels so
// that both compute the same corners, weights and derivatives. Host-only argument checking lives at
// the bottom.
//
// Layout (mmcv's and torchvision's): for deform group g and kernel tap k = i * kw + j, offset channel
// 2 * (K * g + k) is the y displacement and the next channel the x displacement (K = kh * kw); mask
// channel K * g + k. Output pixel (oy, ox) samples its tap (i, j) at
//   (oy * stride_h - pad_h + i * dil_h + dy, ox * stride_w - pad_w + j * dil_w + dx)
// with mmcv's zero-outside rule: each of the 2x2 corners outside the frame contributes 0 and the
// others keep their weights (no renormalisation).
//
// Precision policy. The position is split as (integer base + floor(offset)) + (offset - floor(offset))
// in the accumulation type (float32 for float16/bfloat16 storage, float64 for float64), so the
// bilinear weights keep the offset's own precision instead of losing log2(position) bits to
// base + offset on wide frames. Offsets and masks may be stored in float32 when x is float16/bfloat16
// (recommended: a float16 offset has ulp 1/1024 px at 1 px, 1/32 px at 32 px); they are read as
// stored and never rounded to x's dtype. The sampled columns are rounded once to x's dtype, as the
// GEMM that follows takes them in that dtype (with float32 accumulation).
//
// Non-finite values. A NaN or +-inf offset makes its sample NaN, hence the output pixel NaN, as the
// reference's arithmetic gives (mmcv and torchvision give 0 there instead). A NaN mask gives a NaN
// sample. Corners outside the frame are never read, so inf/NaN pixels do not leak into them.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "vsr_fast/flow_warp.h"

namespace vsr_fast {
namespace deform_conv_math {

// Bounds that keep every position an exact integer in float32 (below 2^24): the padded input and the
// dilated kernel are below kMaxExtent on each axis (check_modulated_deform_conv_args), and offsets of
// kMaxOffset pixels or more put every corner outside the frame.
constexpr int64_t kMaxExtent = int64_t(1) << 22;
constexpr int64_t kMaxOffset = int64_t(1) << 23;

// Position of tap `tap` of output index `out` on one axis, before the offset.
C10_HOST_DEVICE inline int64_t tap_base(int64_t out, int64_t stride, int64_t pad, int64_t tap, int64_t dil) {
  return out * stride - pad + tap * dil;
}

// The 2x2 bilinear patch of one sampling point, corners in flow_warp_math's order c = 2 * dy + dx
// (top-left, top-right, bottom-left, bottom-right). The weights are flow_warp's bilinear_weights, and
// every sum over the patch (the sample, and its derivatives through dweight_dy / dweight_dx) is
// flow_warp's bilinear_blend. What differs from flow_warp, and so is not shared, is how a position is
// formed and which corners count: DCN has no align_corners or border mode (a size-1 axis is sampled
// like any other, where flow_warp's align_corners=True always reads index 0), positions are tap bases
// plus offsets kept in acc_t, and a corner outside the frame contributes 0 while the others keep their
// weights (mmcv's rule).
template <typename acc_t>
struct BilinearSample {
  acc_t y0, x0;   // top-left corner, integer-valued; meaningful where a corner is valid
  bool valid[4];  // corner inside the frame
  flow_warp_math::BilinearWeights<acc_t>
      weight;  // zero outside the frame; NaN (every corner) for a NaN sample
  // d weight / d offset per corner (zero outside the frame): blended with the corners' values, the
  // derivative of the sample with respect to the offset's y / x
  flow_warp_math::BilinearWeights<acc_t> dweight_dy, dweight_dx;
  bool nan;  // non-finite offset: the sample is NaN and no corner is valid
};

// In acc_t only (no 64-bit integer maths): positions stay exact integers in float32 within the bounds
// above, and both backends convert corners to their own index type. `base_*` is tap_base's integer.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE BilinearSample<acc_t> bilinear_sample(acc_t base_y, acc_t base_x,
                                                                        acc_t offset_y, acc_t offset_x,
                                                                        acc_t height, acc_t width) {
  using flow_warp_math::bilinear_weights;
  using flow_warp_math::BilinearWeights;
  using flow_warp_math::floor_of;
  using flow_warp_math::is_nonfinite;
  BilinearSample<acc_t> s;
  s.nan = is_nonfinite(offset_y) || is_nonfinite(offset_x);
  // NaN-safe: NaN and +-inf fail it.
  const acc_t limit = acc_t(kMaxOffset);
  const bool usable = offset_y > -limit && offset_y < limit && offset_x > -limit && offset_x < limit;
  const acc_t oy = usable ? offset_y : acc_t(0), ox = usable ? offset_x : acc_t(0);
  const acc_t whole_y = floor_of(oy), whole_x = floor_of(ox);
  const acc_t fy = oy - whole_y, fx = ox - whole_x;  // exact
  s.y0 = base_y + whole_y;                           // exact (integers below 2^24)
  s.x0 = base_x + whole_x;
  const bool row_in[2] = {usable && s.y0 >= acc_t(0) && s.y0 <= height - acc_t(1),
                          usable && s.y0 >= acc_t(-1) && s.y0 <= height - acc_t(2)};
  const bool col_in[2] = {usable && s.x0 >= acc_t(0) && s.x0 <= width - acc_t(1),
                          usable && s.x0 >= acc_t(-1) && s.x0 <= width - acc_t(2)};
  const BilinearWeights<acc_t> blend = bilinear_weights(fx, fy);
  const acc_t wy[2] = {acc_t(1) - fy, fy};
  const acc_t wx[2] = {acc_t(1) - fx, fx};
  const acc_t nan = static_cast<acc_t>(NAN);
  for (int c = 0; c < 4; ++c) {
    const int dy = c >> 1, dx = c & 1;
    s.valid[c] = row_in[dy] && col_in[dx];
    s.weight.w[c] = s.nan ? nan : (s.valid[c] ? blend.w[c] : acc_t(0));
    s.dweight_dy.w[c] = s.nan ? nan : (s.valid[c] ? (dy ? wx[dx] : -wx[dx]) : acc_t(0));
    s.dweight_dx.w[c] = s.nan ? nan : (s.valid[c] ? (dx ? wy[dy] : -wy[dy]) : acc_t(0));
  }
  return s;
}

}  // namespace deform_conv_math
}  // namespace vsr_fast

// Host-only from here (nvcc's device pass parses it too, harmlessly).
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <optional>

namespace vsr_fast {

// Sizes of one modulated_deform_conv call, validated.
struct DeformConvGeometry {
  int64_t n, c, h, w;        // input
  int64_t c_out, kh, kw, k;  // weight; k = kh * kw taps
  int64_t ho, wo;            // output
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t deform_groups, channels_per_group;
};

// Shared by both backends so every kernel rejects the same inputs with the same words.
inline DeformConvGeometry check_modulated_deform_conv_args(
    const char* op, const at::Tensor& x, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t deform_groups) {
  using deform_conv_math::kMaxExtent;
  TORCH_CHECK(x.dim() == 4, op, ": expected x [N, C, H, W], got x of shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": expected weight [C_out, C, kh, kw], got weight of shape ",
              weight.sizes());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have two entries each, got ", stride, ", ", padding, ", ",
              dilation);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 && padding[0] >= 0 &&
                  padding[1] >= 0,
              op, ": expected stride >= 1, dilation >= 1, padding >= 0, got stride ", stride, ", padding ",
              padding, ", dilation ", dilation);
  TORCH_CHECK(groups == 1, op,
              ": only groups=1 is supported (what EDVR and the reference use), got groups=", groups);
  DeformConvGeometry g;
  g.n = x.size(0), g.c = x.size(1), g.h = x.size(2), g.w = x.size(3);
  g.c_out = weight.size(0), g.kh = weight.size(2), g.kw = weight.size(3), g.k = g.kh * g.kw;
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1], g.dh = dilation[0],
  g.dw = dilation[1];
  TORCH_CHECK(weight.size(1) == g.c, op, ": weight ", weight.sizes(), " expects ", weight.size(1),
              " input channels, x ", x.sizes(), " has ", g.c);
  TORCH_CHECK(g.kh >= 1 && g.kw >= 1, op, ": empty kernel in weight ", weight.sizes());
  TORCH_CHECK(deform_groups >= 1 && g.c % deform_groups == 0, op, ": ", g.c,
              " input channels cannot be split into deform_groups=", deform_groups);
  g.deform_groups = deform_groups;
  g.channels_per_group = g.c / deform_groups;
  const int64_t extent_h = g.dh * (g.kh - 1) + 1, extent_w = g.dw * (g.kw - 1) + 1;
  TORCH_CHECK(g.h + 2 * g.ph < kMaxExtent && g.w + 2 * g.pw < kMaxExtent && extent_h < kMaxExtent &&
                  extent_w < kMaxExtent,
              op, ": sizes too large: x ", x.sizes(), ", padding ", padding, ", kernel extent ", extent_h,
              "x", extent_w);
  g.ho = (g.h + 2 * g.ph - extent_h) / g.sh + 1;
  g.wo = (g.w + 2 * g.pw - extent_w) / g.sw + 1;
  TORCH_CHECK(g.h + 2 * g.ph >= extent_h && g.w + 2 * g.pw >= extent_w, op, ": the padded input ",
              g.h + 2 * g.ph, "x", g.w + 2 * g.pw, " (x ", x.sizes(), ", padding ", padding,
              ") is smaller than the dilated kernel ", extent_h, "x", extent_w);
  TORCH_CHECK(offset.dim() == 4 && offset.size(0) == g.n && offset.size(1) == 2 * deform_groups * g.k &&
                  offset.size(2) == g.ho && offset.size(3) == g.wo,
              op, ": expected offset [", g.n, ", ", 2 * deform_groups * g.k, ", ", g.ho, ", ", g.wo,
              "] (N, 2 * deform_groups * kh * kw, H_out, W_out), got ", offset.sizes());
  TORCH_CHECK(mask.dim() == 4 && mask.size(0) == g.n && mask.size(1) == deform_groups * g.k &&
                  mask.size(2) == g.ho && mask.size(3) == g.wo,
              op, ": expected mask [", g.n, ", ", deform_groups * g.k, ", ", g.ho, ", ", g.wo,
              "] (N, deform_groups * kh * kw, H_out, W_out), got ", mask.sizes());
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.c_out, op, ": expected bias [", g.c_out, "], got ",
                bias->sizes());
  }
  for (const at::Tensor* t : {&offset, &mask, &weight}) {
    TORCH_CHECK(t->device() == x.device(), op, ": every tensor must be on x's device ", x.device(),
                ", got one on ", t->device());
  }
  TORCH_CHECK(!has_bias || bias->device() == x.device(), op, ": bias must be on x's device ", x.device(),
              ", got ", bias->device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": expected x of a floating dtype (float32, float64, float16, bfloat16), got ",
              x.scalar_type());
  TORCH_CHECK(
      weight.scalar_type() == x.scalar_type() && (!has_bias || bias->scalar_type() == x.scalar_type()), op,
      ": weight and bias must have x's dtype ", x.scalar_type(), ", got weight ", weight.scalar_type(),
      has_bias ? " and bias " : "", has_bias ? c10::toString(bias->scalar_type()) : "");
  const bool reduced = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(offset.scalar_type() == mask.scalar_type() && (offset.scalar_type() == x.scalar_type() ||
                                                             (reduced && offset.scalar_type() == at::kFloat)),
              op, ": offset and mask must share x's dtype (or float32 when x is float16/bfloat16), got x ",
              x.scalar_type(), ", offset ", offset.scalar_type(), ", mask ", mask.scalar_type());
  return g;
}

inline void check_modulated_deform_conv_grad_out(const char* op, const at::Tensor& grad_out,
                                                 const at::Tensor& x, const DeformConvGeometry& g) {
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == g.n && grad_out.size(1) == g.c_out &&
                  grad_out.size(2) == g.ho && grad_out.size(3) == g.wo,
              op, ": expected grad_out [", g.n, ", ", g.c_out, ", ", g.ho, ", ", g.wo, "], got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type() && grad_out.device() == x.device(), op,
              ": expected grad_out with x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
              grad_out.scalar_type(), ", ", grad_out.device());
}

// ---- the GEMM side, the same on both backends (ATen's addmm / mm: MKL or oneDNN on CPU, cuBLAS on
// CUDA). Columns are [pixels, C * K] with (deform group, tap, channel of the group) order.

// Output rows per chunk such that the column buffer stays within column_bytes (at least one row).
inline int64_t rows_per_chunk(const DeformConvGeometry& g, int64_t element_size, int64_t column_bytes) {
  const int64_t row_bytes = std::max<int64_t>(1, g.wo * g.k * g.c * element_size);
  return std::clamp<int64_t>(column_bytes / row_bytes, 1, g.ho);
}

// Weight as the GEMM's right-hand side [C * K, C_out], rows in the columns' (group, tap, channel) order.
inline at::Tensor weight_matrix(const at::Tensor& weight, int64_t groups) {
  const int64_t c_out = weight.size(0), c = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  return weight.reshape({c_out, groups, c / groups, kh, kw})
      .permute({1, 3, 4, 2, 0})
      .reshape({-1, c_out})
      .contiguous();
}

// grad_weight from its [C * K, C_out] matrix (weight_matrix's order).
inline void copy_weight_matrix(at::Tensor& grad_weight, const at::Tensor& matrix, int64_t groups) {
  const int64_t c_out = grad_weight.size(0), c = grad_weight.size(1), kh = grad_weight.size(2),
                kw = grad_weight.size(3);
  grad_weight.view({c_out, groups, c / groups, kh, kw})
      .copy_(matrix.view({groups, kh, kw, c / groups, c_out}).permute({4, 0, 3, 1, 2}));
}

// Image n, output rows [row0, row0 + rows) of an [N, C, Ho, Wo] tensor as a [rows * Wo, C] matrix.
inline at::Tensor rows_matrix(const at::Tensor& t, int64_t n, int64_t row0, int64_t rows) {
  return t.select(0, n).narrow(1, row0, rows).permute({1, 2, 0}).reshape({-1, t.size(1)});
}

// out rows [row0, row0 + rows) of image n = columns x weight matrix (+ bias), written in place
// (out's layout makes those rows one [rows * Wo, C_out] view).
inline void columns_times_weight_into(const at::Tensor& out, int64_t n, int64_t row0, int64_t rows,
                                      const at::Tensor& cols, const at::Tensor& wm, const at::Tensor& bias) {
  at::Tensor o = out.select(0, n).narrow(1, row0, rows).permute({1, 2, 0}).view({-1, out.size(1)});
  if (bias.defined()) {
    at::addmm_out(o, bias.unsqueeze(0).expand({rows * out.size(3), out.size(1)}), cols, wm);
  } else {
    at::mm_out(o, cols, wm);
  }
}

// grad_weight's matrix (acc_t, [C * K, C_out]) += columns^T x grad_out rows.
inline void accumulate_grad_weight(at::Tensor& gwm, const at::Tensor& cols, const at::Tensor& gout) {
  if (gwm.scalar_type() == cols.scalar_type()) {
    gwm.addmm_(cols.t(), gout);
  } else {
    gwm.add_(at::mm(cols.t(), gout));
  }
}

// What both backends' backward start from: the five gradients allocated (an unwanted one, or
// grad_bias without a bias, is an empty [0] tensor; grad_x with x's layout), grad_bias already
// summed, and whether sampling work is left; where it is not, the other wanted gradients are zeroed.
struct DeformConvBackwardSetup {
  at::Tensor grad_x, grad_offset, grad_mask, grad_weight, grad_bias;
  bool need_x, need_offset, need_mask, need_weight, need_columns_grad;
  bool work;
};

inline DeformConvBackwardSetup setup_modulated_deform_conv_backward(
    const DeformConvGeometry& g, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    std::array<bool, 5> output_mask) {
  DeformConvBackwardSetup b;
  const bool has_bias = bias.has_value() && bias->defined();
  b.need_x = output_mask[0], b.need_offset = output_mask[1], b.need_mask = output_mask[2],
  b.need_weight = output_mask[3];
  const bool need_bias = output_mask[4] && has_bias;
  b.need_columns_grad = b.need_x || b.need_offset || b.need_mask;
  b.grad_x = b.need_x ? at::empty_like(x) : x.new_empty({0});
  b.grad_offset = b.need_offset ? at::empty_like(offset) : offset.new_empty({0});
  b.grad_mask = b.need_mask ? at::empty_like(mask) : mask.new_empty({0});
  b.grad_weight = b.need_weight ? at::empty_like(weight) : weight.new_empty({0});
  b.grad_bias = need_bias ? at::empty_like(*bias) : weight.new_empty({0});
  const bool pixels = g.n > 0 && g.ho > 0 && g.wo > 0 && g.c_out > 0;
  if (need_bias) {
    if (pixels) {
      b.grad_bias.copy_(grad_out.sum({0, 2, 3}, false, at::toOpMathType(x.scalar_type())));
    } else {
      b.grad_bias.zero_();
    }
  }
  b.work = pixels && g.c > 0 && (b.need_columns_grad || b.need_weight);
  if (!b.work) {
    for (at::Tensor* t : {&b.grad_x, &b.grad_offset, &b.grad_mask, &b.grad_weight}) t->zero_();
  }
  return b;
}

}  // namespace vsr_fast
