// What the CPU and CUDA kernels of vsr_fast::reconstruction_tail share: the argument checks (so both
// reject the same inputs in the same words; vsr_fast/ops/reconstruction_tail.py repeats them for the
// fake kernel) and the library path through ATen operators, which is CUDA's path (cuDNN convolutions)
// and the CPU's for dtypes without the oneDNN path. Host-only.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/leaky_relu.h>
#include <ATen/ops/upsample_bilinear2d.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

namespace vsr_fast {

// The four 3x3 convolutions of the tail: upsample1 and upsample2 (each followed by pixel_shuffle(2), so
// 4 * C_out output channels), conv_hr and conv_last (3 output channels).
constexpr size_t kTailConvs = 4;

inline void check_reconstruction_tail_args(const at::Tensor& lr, const at::Tensor& feat,
                                           const std::optional<at::Tensor>& feat_forward,
                                           const std::optional<at::Tensor>& fusion_weight,
                                           const std::optional<at::Tensor>& fusion_bias,
                                           at::TensorList weights, at::TensorList biases) {
  const char* op = "vsr_fast::reconstruction_tail";
  TORCH_CHECK(lr.dim() == 4 && lr.size(1) == 3, op, ": expected lr [N, 3, H, W], got ", lr.sizes());
  TORCH_CHECK(feat.dim() == 4 && feat.size(0) == lr.size(0) && feat.size(2) == lr.size(2) &&
                  feat.size(3) == lr.size(3),
              op, ": expected feat [N, C, H, W] of lr's N, H, W, got lr ", lr.sizes(), " and feat ",
              feat.sizes());
  TORCH_CHECK(at::isFloatingType(lr.scalar_type()), op, ": expected a floating dtype, got ",
              lr.scalar_type());
  auto same_kind = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == lr.scalar_type() && t.device() == lr.device(), op, ": ", name,
                " must have lr's dtype and device (", lr.scalar_type(), " on ", lr.device(), "), got ",
                t.scalar_type(), " on ", t.device());
  };
  same_kind(feat, "feat");
  int64_t channels = feat.size(1);
  if (feat_forward.has_value()) {
    TORCH_CHECK(fusion_weight.has_value(), op, ": feat_forward needs fusion_weight (the 1x1 fusion conv)");
    TORCH_CHECK(feat_forward->dim() == 4 && feat_forward->size(0) == feat.size(0) &&
                    feat_forward->size(2) == feat.size(2) && feat_forward->size(3) == feat.size(3),
                op, ": expected feat_forward [N, C_f, H, W] of feat's N, H, W, got feat ", feat.sizes(),
                " and feat_forward ", feat_forward->sizes());
    same_kind(*feat_forward, "feat_forward");
    channels += feat_forward->size(1);
  }
  TORCH_CHECK(fusion_weight.has_value() == fusion_bias.has_value(), op,
              ": fusion_weight and fusion_bias come together");
  if (fusion_weight.has_value()) {
    const at::Tensor& fw = *fusion_weight;
    TORCH_CHECK(fw.dim() == 4 && fw.size(1) == channels && fw.size(2) == 1 && fw.size(3) == 1, op,
                ": fusion_weight must be [C_out, ", channels, ", 1, 1], got ", fw.sizes());
    TORCH_CHECK(fusion_bias->dim() == 1 && fusion_bias->size(0) == fw.size(0), op, ": fusion_bias must be [",
                fw.size(0), "], got ", fusion_bias->sizes());
    same_kind(fw, "fusion_weight");
    same_kind(*fusion_bias, "fusion_bias");
    channels = fw.size(0);
  }
  TORCH_CHECK(weights.size() == kTailConvs && biases.size() == kTailConvs, op,
              ": expected 4 weights and 4 biases (upsample1, upsample2, conv_hr, conv_last), got ",
              weights.size(), " and ", biases.size());
  for (size_t i = 0; i < kTailConvs; ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.dim() == 4 && w.size(1) == channels && w.size(2) == 3 && w.size(3) == 3, op, ": weights[",
                i, "] must be [C_out, ", channels, ", 3, 3], got ", w.sizes());
    const int64_t out = w.size(0);
    if (i < 2) {
      TORCH_CHECK(out > 0 && out % 4 == 0, op, ": weights[", i,
                  "] feeds pixel_shuffle(2): its output channels must be a positive multiple of 4, got ",
                  out);
    } else if (i == 2) {
      TORCH_CHECK(out > 0, op, ": weights[2] must have output channels, got ", w.sizes());
    } else {
      TORCH_CHECK(out == 3, op, ": weights[3] (conv_last) must have 3 output channels, got ", w.sizes());
    }
    TORCH_CHECK(biases[i].dim() == 1 && biases[i].size(0) == out, op, ": biases[", i, "] must be [", out,
                "], got ", biases[i].sizes());
    same_kind(w, i == 0 ? "weights[0]" : i == 1 ? "weights[1]" : i == 2 ? "weights[2]" : "weights[3]");
    same_kind(biases[i], i == 0 ? "biases[0]" : i == 1 ? "biases[1]" : i == 2 ? "biases[2]" : "biases[3]");
    channels = i < 2 ? out / 4 : out;
  }
}

namespace tail {

constexpr double kSlope = 0.1;  // LeakyReLU's negative slope throughout BasicVSR / IconVSR

inline at::Tensor empty_nhwc(const at::Tensor& like, int64_t channels, int64_t h, int64_t w) {
  return at::empty({like.size(0), channels, h, w},
                   like.options().memory_format(at::MemoryFormat::ChannelsLast));
}

// [N*H*W, C] rows of a channels_last dense tensor (a view).
inline at::Tensor nhwc_rows(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).reshape({-1, t.size(1)}); }

// LeakyReLU(conv1x1(cat[feat, feat_forward?]) + bias) as one or two GEMMs over the NHWC rows, the second
// accumulated into the first's output, so the concatenation is never formed. Inputs channels_last dense.
inline at::Tensor fusion_nhwc(const at::Tensor& feat, const std::optional<at::Tensor>& feat_forward,
                              const at::Tensor& weight, const at::Tensor& bias) {
  const int64_t c_out = weight.size(0), c = feat.size(1);
  at::Tensor out = empty_nhwc(feat, c_out, feat.size(2), feat.size(3));
  at::Tensor rows = out.permute({0, 2, 3, 1}).view({-1, c_out});
  const at::Tensor matrix = weight.reshape({c_out, weight.size(1)});
  at::addmm_out(rows, bias, nhwc_rows(feat), matrix.narrow(1, 0, c).t());
  if (feat_forward.has_value()) {
    rows.addmm_(nhwc_rows(*feat_forward), matrix.narrow(1, c, feat_forward->size(1)).t());
  }
  at::leaky_relu_(out, kSlope);
  return out;
}

// The [N, 4C, H, W] -> [N, C, 2H, 2W] pixel_shuffle(2) destination and source as matching views of
// channels_last buffers: out[n, c, 2h+i, 2w+j] = in[n, 4c + 2i + j, h, w], both indexed [n, h, i, w, j, c].
inline at::Tensor shuffled_nhwc(const at::Tensor& in) {
  return empty_nhwc(in, in.size(1) / 4, 2 * in.size(2), 2 * in.size(3));
}
inline std::pair<at::Tensor, at::Tensor> shuffle_views(const at::Tensor& out, const at::Tensor& in) {
  const int64_t n = in.size(0), c = out.size(1), h = in.size(2), w = in.size(3);
  return {out.permute({0, 2, 3, 1}).view({n, h, 2, w, 2, c}),
          in.permute({0, 2, 3, 1}).view({n, h, w, c, 2, 2}).permute({0, 1, 4, 2, 5, 3})};
}

// The x4 bilinear base of the LR frame (align_corners=False, scale 4 as nn.Upsample passes it).
inline at::Tensor bilinear_base(const at::Tensor& lr_nhwc) {
  return at::upsample_bilinear2d(lr_nhwc, {4 * lr_nhwc.size(2), 4 * lr_nhwc.size(3)}, false, 4.0, 4.0)
      .contiguous(at::MemoryFormat::ChannelsLast);
}

// The whole tail through ATen operators in channels_last (cuDNN on CUDA), each LeakyReLU written
// straight into its pixel-shuffled place. Autograd must already be excluded by the caller.
inline at::Tensor library_path(const at::Tensor& lr, const at::Tensor& feat,
                               const std::optional<at::Tensor>& feat_forward,
                               const std::optional<at::Tensor>& fusion_weight,
                               const std::optional<at::Tensor>& fusion_bias, at::TensorList weights,
                               at::TensorList biases) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const std::vector<int64_t> ones = {1, 1};
  auto conv = [&](const at::Tensor& x, size_t i) {
    return at::convolution(x, weights[i].contiguous(cl), biases[i], ones, ones, ones, false, {0, 0}, 1)
        .contiguous(cl);
  };
  at::Tensor x = feat.contiguous(cl);
  if (fusion_weight.has_value()) {
    std::optional<at::Tensor> forward;
    if (feat_forward.has_value()) forward = feat_forward->contiguous(cl);
    x = fusion_nhwc(x, forward, *fusion_weight, *fusion_bias);
  }
  for (size_t i = 0; i < 2; ++i) {
    const at::Tensor up = conv(x, i);
    x = shuffled_nhwc(up);
    auto [dst, src] = shuffle_views(x, up);
    at::leaky_relu_out(dst, src, kSlope);
  }
  x = conv(x, 2);
  at::leaky_relu_(x, kSlope);
  at::Tensor out = conv(x, 3);
  out.add_(bilinear_base(lr.contiguous(cl)));
  return out;
}

}  // namespace tail
}  // namespace vsr_fast
