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

// The 2x2 bilinear patch of one sampling point. Corner c = 2 * dy + dx (top-left, top-right,
// bottom-left, bottom-right).
template <typename acc_t>
struct BilinearSample {
  acc_t y0, x0;                        // top-left corner, integer-valued; meaningful where a corner is valid
  bool valid[4];                       // corner inside the frame
  acc_t weight[4];                     // zero outside the frame; NaN (every corner) for a NaN sample
  acc_t dweight_dy[4], dweight_dx[4];  // d weight / d offset; zero outside the frame
  bool nan;                            // non-finite offset: the sample is NaN and no corner is valid
};

// In acc_t only (no 64-bit integer maths): positions stay exact integers in float32 within the bounds
// above, and both backends convert corners to their own index type. `base_*` is tap_base's integer.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE BilinearSample<acc_t> bilinear_sample(acc_t base_y, acc_t base_x,
                                                                        acc_t offset_y, acc_t offset_x,
                                                                        acc_t height, acc_t width) {
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
  const acc_t wy[2] = {acc_t(1) - fy, fy};
  const acc_t wx[2] = {acc_t(1) - fx, fx};
  const acc_t nan = static_cast<acc_t>(NAN);
  for (int c = 0; c < 4; ++c) {
    const int dy = c >> 1, dx = c & 1;
    s.valid[c] = row_in[dy] && col_in[dx];
    s.weight[c] = s.nan ? nan : (s.valid[c] ? wy[dy] * wx[dx] : acc_t(0));
    s.dweight_dy[c] = s.nan ? nan : (s.valid[c] ? (dy ? wx[dx] : -wx[dx]) : acc_t(0));
    s.dweight_dx[c] = s.nan ? nan : (s.valid[c] ? (dx ? wy[dy] : -wy[dy]) : acc_t(0));
  }
  return s;
}

}  // namespace deform_conv_math
}  // namespace vsr_fast

// Host-only from here (nvcc's device pass parses it too, harmlessly).
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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

}  // namespace vsr_fast
