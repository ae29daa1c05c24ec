// Sampling maths of vsr_fast::flow_warp, shared by the CPU and CUDA kernels so that both compute the
// same taps, weights and derivatives bit for bit. Host-only argument checking lives at the bottom.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace vsr_fast {
namespace flow_warp_math {

// Enum values are the integers of the op schema (the Python wrapper maps the strings).
enum Interpolation : int64_t { kBilinear = 0, kNearest = 1 };
enum Padding : int64_t { kZeros = 0, kBorder = 1 };

C10_HOST_DEVICE inline float floor_of(float v) { return floorf(v); }
C10_HOST_DEVICE inline double floor_of(double v) { return floor(v); }
// Round half to even, as grid_sample's nearest mode does.
C10_HOST_DEVICE inline float round_even(float v) { return nearbyintf(v); }
C10_HOST_DEVICE inline double round_even(double v) { return nearbyint(v); }

// The bilinear blend of a 2x2 patch, written once for every kernel of both backends. fx, fy: the
// position inside the patch (0 .. 1 from the top-left tap); weights and taps in PixelTaps's order
// k = 2 * dy + dx: top-left, top-right, bottom-left, bottom-right.
template <typename acc_t>
struct BilinearWeights {
  acc_t w[4];
};

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE BilinearWeights<acc_t> bilinear_weights(acc_t fx, acc_t fy) {
  const acc_t gx = acc_t(1) - fx, gy = acc_t(1) - fy;
  return {{gy * gx, gy * fx, fy * gx, fy * fx}};
}

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t bilinear_blend(const BilinearWeights<acc_t>& b, acc_t v00, acc_t v01,
                                                       acc_t v10, acc_t v11) {
  return b.w[0] * v00 + b.w[1] * v01 + b.w[2] * v10 + b.w[3] * v11;
}

// d blend / d fx and d blend / d fy; times the axis' d position / d flow, the flow gradient.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t bilinear_slope_x(acc_t fy, acc_t v00, acc_t v01, acc_t v10,
                                                         acc_t v11) {
  return (acc_t(1) - fy) * (v01 - v00) + fy * (v11 - v10);
}

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t bilinear_slope_y(acc_t fx, acc_t v00, acc_t v01, acc_t v10,
                                                         acc_t v11) {
  return (acc_t(1) - fx) * (v10 - v00) + fx * (v11 - v01);
}

// One axis of a sampling position: the position is `lo + frac`; bilinear reads taps lo and lo + 1
// with weights 1 - frac and frac, nearest reads tap lo. `dpos` is d(position)/d(flow), zero where
// border padding clipped the position. `usable` is false when no tap can lie inside the image (also
// for NaN positions), in which case the other fields are meaningless.
template <typename acc_t>
struct AxisPosition {
  int64_t lo;
  acc_t frac;
  acc_t dpos;
  bool usable;
  bool nonfinite;  // NaN/inf flow under zeros padding: grid_sample returns NaN there
};

// NaN and +-inf give NaN here; works without isfinite overloads on either side of nvcc.
template <typename acc_t>
C10_HOST_DEVICE inline bool is_nonfinite(acc_t v) {
  const acc_t d = v - v;
  return d != d;
}

// `pos` is the output pixel index on this axis, `flow` the displacement in pixels. The position is
// mmagic's: grid + flow normalised by max(size - 1, 1) and handed to grid_sample, i.e.
//   align_corners=True : pos + flow          (a size-1 axis always samples index 0)
//   align_corners=False: (pos + flow) * size / max(size - 1, 1) - 0.5
// Every decision (inside or not, clipped or not, which taps) is taken on the exact integer part `lo`,
// never on pos + flow rounded to acc_t: in float32 that sum loses the odd columns past 2^24 px.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE AxisPosition<acc_t> axis_position(int64_t pos, acc_t flow, int64_t size,
                                                                    bool align_corners, bool border,
                                                                    bool nearest) {
  AxisPosition<acc_t> a;
  a.lo = 0;
  a.frac = acc_t(0);
  a.dpos = acc_t(0);
  a.usable = false;
  a.nonfinite = false;

  const int64_t last = size - 1;
  // d position / d flow; zero on a size-1 axis under align_corners (grid_sample maps it to 0)
  const acc_t scale = align_corners ? acc_t(size > 1 ? 1 : 0) : acc_t(size) / acc_t(size > 1 ? last : 1);
  if (align_corners && size == 1) {
    // every position maps to index 0 (weight 1, scale 0: no gradient), but NaN/inf flows stay NaN
    // under zeros padding, as the reference's arithmetic (flow * 0) makes them
    a.nonfinite = !border && is_nonfinite(flow);
    a.usable = !a.nonfinite;
    return a;
  }
  // A flow this large puts the position (|pos + flow| * scale, scale <= 2) beyond every tap: decided
  // by its sign alone, and the integer maths below never sees a value it could overflow on. NaN and
  // +-inf fail the test too.
  const acc_t far = acc_t(2) * acc_t(size) + acc_t(4);
  if (!(flow > -far && flow < far)) {
    // border: clipped to the edge the flow points at, as grid_sample does (NaN to 0), no gradient
    a.usable = border;
    a.lo = border && flow > acc_t(0) ? last : 0;
    a.nonfinite = !border && is_nonfinite(flow);
    return a;
  }

  // Position = whole + rest with an exact integer `whole` and a small `rest`, so that the weights
  // keep the flow's own precision instead of losing log2(pos) bits to pos + flow on wide frames
  // (the fp32 ulp at x = 1024 is 1.2e-4 px).
  const acc_t flow_floor = floor_of(flow);
  const int64_t whole = pos + static_cast<int64_t>(flow_floor);
  const acc_t flow_frac = flow - flow_floor;  // exact
  acc_t rest = flow_frac;
  int64_t integral = whole;
  if (!align_corners) {
    // (whole + flow_frac) * size / d - 0.5 with d = max(size - 1, 1), size / d = 1 + (size - d) / d,
    // and whole * (size - d) = q * d + r split in integers: no float ever holds a number of the
    // frame's size (float32 rounds size - d to 0 or 2 past 2^24: a tap one pixel off).
    const int64_t d = size > 1 ? last : 1;
    const int64_t m = whole * (size - d);
    const int64_t q = m >= 0 ? m / d : -((d - 1 - m) / d);  // floor division
    integral += q;
    rest = acc_t(m - q * d) / acc_t(d) + flow_frac * acc_t(size) / acc_t(d) - acc_t(0.5);
  }
  const acc_t rest_floor = floor_of(rest);
  int64_t lo = integral + static_cast<int64_t>(rest_floor);
  acc_t frac = rest - rest_floor;
  if (frac >= acc_t(1)) {  // a tiny negative rest rounded up to 1 when made positive
    lo += 1;
    frac = acc_t(0);
  }
  if (border) {
    // grid_sample clips positions <= 0 and >= size - 1, which then get no gradient
    const bool low = lo < 0 || (lo == 0 && frac == acc_t(0));
    if (low || lo >= last) {
      a.usable = true;
      a.lo = low ? 0 : last;
      return a;
    }
  } else if (lo < -1 || lo > last) {
    return a;  // both taps outside
  }
  a.usable = true;
  a.dpos = scale;
  a.lo = lo;
  a.frac = frac;
  if (nearest) {
    // round half to even on lo + frac, as grid_sample's nearest mode does
    const bool up = frac > acc_t(0.5) || (frac == acc_t(0.5) && (lo & 1));
    a.lo += up ? 1 : 0;
    a.frac = acc_t(0);
  }
  return a;
}

// The (up to) four taps of one output pixel. Taps outside the image have valid = false and must be
// skipped, not multiplied by zero, so that inf/NaN pixels elsewhere never leak in (grid_sample masks
// them the same way). offset is in elements from the (n, c) plane origin.
template <typename acc_t>
struct PixelTaps {
  int64_t offset[4];
  acc_t weight[4];
  acc_t dweight_dx[4];  // d weight / d flow_x (includes dpos)
  acc_t dweight_dy[4];
  bool valid[4];
  int num_taps;  // 4 for bilinear, 1 for nearest
  // A NaN/inf bilinear sampling position under zeros padding: the output is NaN, as the reference's
  // grid_sample gives, rather than a silent 0 (nearest gives 0 there, as the reference does). No tap
  // is valid then, so nothing flows back: grad_x gets nothing and grad_flow is 0 at that pixel
  // (docs/design.md, "flow_warp and non-finite flows").
  bool nan_out;
  // The factors the weights are made of, for kernels that expand them inline: weight[k] =
  // (dy ? frac_y : 1 - frac_y) * (dx ? frac_x : 1 - frac_x), and d position / d flow per axis.
  acc_t frac_x, frac_y, dpos_x, dpos_y;
  // row and column of the top-left tap (nearest: of the tap); meaningful when a tap is valid
  int64_t row0, col0;

  C10_HOST_DEVICE bool all_valid() const {
    bool all = true;
    for (int k = 0; k < num_taps; ++k) all = all && valid[k];
    return all;
  }
};

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE PixelTaps<acc_t> pixel_taps(int64_t y, int64_t x, acc_t flow_x,
                                                              acc_t flow_y, int64_t height, int64_t width,
                                                              int64_t stride_h, int64_t stride_w,
                                                              bool align_corners, int64_t padding,
                                                              int64_t interpolation) {
  const bool border = padding == kBorder;
  const bool nearest = interpolation == kNearest;
  const AxisPosition<acc_t> px = axis_position<acc_t>(x, flow_x, width, align_corners, border, nearest);
  const AxisPosition<acc_t> py = axis_position<acc_t>(y, flow_y, height, align_corners, border, nearest);
  PixelTaps<acc_t> t;
  t.num_taps = nearest ? 1 : 4;
  t.frac_x = px.frac;
  t.frac_y = py.frac;
  t.dpos_x = px.dpos;
  t.dpos_y = py.dpos;
  for (int k = 0; k < 4; ++k) {
    t.offset[k] = 0;
    t.weight[k] = acc_t(0);
    t.dweight_dx[k] = acc_t(0);
    t.dweight_dy[k] = acc_t(0);
    t.valid[k] = false;
  }
  t.nan_out = !nearest && (px.nonfinite || py.nonfinite);
  t.row0 = py.lo;
  t.col0 = px.lo;
  if (!(px.usable && py.usable)) {
    return t;
  }
  if (nearest) {
    t.valid[0] = px.lo >= 0 && px.lo < width && py.lo >= 0 && py.lo < height;
    t.offset[0] = t.valid[0] ? py.lo * stride_h + px.lo * stride_w : 0;
    t.weight[0] = acc_t(1);
    return t;
  }
  const BilinearWeights<acc_t> blend = bilinear_weights(px.frac, py.frac);
  for (int k = 0; k < 4; ++k) {
    const int dy = k >> 1;
    const int dx = k & 1;
    const int64_t ty = py.lo + dy;
    const int64_t tx = px.lo + dx;
    const acc_t wy = dy ? py.frac : acc_t(1) - py.frac;
    const acc_t wx = dx ? px.frac : acc_t(1) - px.frac;
    t.valid[k] = tx >= 0 && tx < width && ty >= 0 && ty < height;
    t.offset[k] = t.valid[k] ? ty * stride_h + tx * stride_w : 0;
    t.weight[k] = blend.w[k];
    t.dweight_dx[k] = (dx ? wy : -wy) * px.dpos;
    t.dweight_dy[k] = (dy ? wx : -wx) * py.dpos;
  }
  return t;
}

}  // namespace flow_warp_math
}  // namespace vsr_fast

// Host-only from here (nvcc's device pass parses it too, harmlessly).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <c10/util/Exception.h>

#include <type_traits>

namespace vsr_fast {

// Shared by both backends so every kernel rejects the same inputs with the same words.
inline void check_flow_warp_args(const char* op, const at::Tensor& x, const at::Tensor& flow,
                                 int64_t interpolation, int64_t padding_mode) {
  TORCH_CHECK(x.defined() && flow.defined(), op, ": x and flow must be tensors, got ",
              x.defined() ? "a tensor" : "None", " and ", flow.defined() ? "a tensor" : "None");
  TORCH_CHECK(x.dim() == 4, op, ": expected x [N, C, H, W], got x of shape ", x.sizes());
  TORCH_CHECK(flow.dim() == 4 && flow.size(3) == 2 && flow.size(0) == x.size(0) &&
                  flow.size(1) == x.size(2) && flow.size(2) == x.size(3),
              op, ": expected flow [N, H, W, 2] matching x [N, C, H, W] = ", x.sizes(), ", got flow ",
              flow.sizes());
  TORCH_CHECK(x.device() == flow.device(), op, ": x and flow must be on the same device, got x on ",
              x.device(), " and flow on ", flow.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": expected x of a floating dtype (float32, float64, float16, bfloat16), got ",
              x.scalar_type());
  const bool reduced = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(flow.scalar_type() == x.scalar_type() || (reduced && flow.scalar_type() == at::kFloat), op,
              ": flow must have x's dtype (or float32 when x is float16/bfloat16), got x ", x.scalar_type(),
              " and flow ", flow.scalar_type());
  TORCH_CHECK(interpolation == flow_warp_math::kBilinear || interpolation == flow_warp_math::kNearest, op,
              ": interpolation must be 0 (bilinear) or 1 (nearest), got ", interpolation);
  TORCH_CHECK(padding_mode == flow_warp_math::kZeros || padding_mode == flow_warp_math::kBorder, op,
              ": padding_mode must be 0 (zeros) or 1 (border), got ", padding_mode);
}

// Calls fn(flow_t{}) with the flow's element type: x's own, or float for float16/bfloat16 x (the
// only mixed pair check_flow_warp_args lets through), without instantiating impossible pairs.
template <typename scalar_t, typename Fn>
void with_flow_type(const at::Tensor& x, const at::Tensor& flow, Fn&& fn) {
  if constexpr (std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>) {
    if (flow.scalar_type() != x.scalar_type()) {
      fn(float{});
      return;
    }
  }
  fn(scalar_t{});
}

// What both backends' backward start from: x made dense (scatter offsets come from x's strides, so
// the grad_x accumulator must share them), the two outputs allocated (an unrequested one is an empty
// [0] tensor, grad_x zeroed as the scatter target), and whether any work is left (C == 0 still has
// a zero flow gradient).
struct BackwardSetup {
  at::Tensor x, grad_x, grad_flow;
  bool need_x, need_flow, work;
};

inline BackwardSetup setup_flow_warp_backward(const at::Tensor& x_in, const at::Tensor& flow, bool need_x,
                                              bool need_flow) {
  BackwardSetup b;
  b.x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous(x_in.suggest_memory_format());
  b.need_x = need_x;
  b.need_flow = need_flow;
  b.grad_x = need_x ? at::empty_like(b.x).zero_() : b.x.new_empty({0});
  b.grad_flow = need_flow ? at::empty_like(flow) : flow.new_empty({0});
  b.work = b.x.numel() > 0 && (need_x || need_flow);
  if (!b.work && need_flow) b.grad_flow.zero_();
  return b;
}

// What grad_x is scattered into: grad_x itself, or for float16/bfloat16 a zeroed fp32 tensor with
// x's strides (many taps can land on one pixel; the caller copies it into grad_x afterwards).
inline at::Tensor grad_x_accumulator(const at::Tensor& x, const at::Tensor& grad_x, at::ScalarType acc_type) {
  if (acc_type == x.scalar_type()) return grad_x;
  return at::empty_strided(x.sizes(), x.strides(), x.options().dtype(acc_type)).zero_();
}

inline void check_flow_warp_backward_args(const at::Tensor& grad_out, const at::Tensor& x,
                                          const at::Tensor& flow, int64_t interpolation,
                                          int64_t padding_mode) {
  const char* op = "vsr_fast::_flow_warp_backward";
  check_flow_warp_args(op, x, flow, interpolation, padding_mode);
  TORCH_CHECK(grad_out.defined(), op, ": grad_out must be a tensor, got None");
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": expected grad_out of x's shape ", x.sizes(), ", got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type() && grad_out.device() == x.device(), op,
              ": expected grad_out with x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
              grad_out.scalar_type(), ", ", grad_out.device());
}

}  // namespace vsr_fast
