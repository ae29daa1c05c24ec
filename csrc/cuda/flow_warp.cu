// CUDA kernels of vsr_fast::flow_warp and vsr_fast::_flow_warp_backward. The sampling maths is the
// shared header's, so CPU and CUDA compute the same taps and weights.
//
// Forward: one thread per (pixel, block of channels), consecutive threads along the output's
// fastest dimension (pixels for NCHW, channel blocks for channels_last), so the writes coalesce; it
// also writes the warped state into its channel slice of propagation_step's trunk input. Backward: one thread
// per pixel loops over all channels, so grad_flow is a private sum (deterministic) while grad_x is scattered
// with float atomics (non-deterministic order, reported to torch's deterministic mode).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <type_traits>

#include "cuda_kernels.h"
#include "indexing.cuh"
#include "vsr_fast/flow_warp.h"

namespace vsr_fast {
namespace {

using namespace flow_warp_math;

constexpr int kThreads = 256;
constexpr int kForwardChannels = 8;  // channels per forward thread

struct Shape {
  int64_t n, c, h, w;
};

// The taps of pixel `pixel` (linear over N, H, W) and its coordinates.
template <typename acc_t, typename flow_t, typename index_t>
__device__ __forceinline__ PixelTaps<acc_t> taps_of_pixel(index_t pixel, const flow_t* __restrict__ flow,
                                                          Shape shape, Strides4<index_t> xs,
                                                          Strides4<index_t> fs, int64_t interpolation,
                                                          int64_t padding_mode, bool align_corners,
                                                          index_t& n, index_t& y, index_t& ix) {
  const index_t W = static_cast<index_t>(shape.w), H = static_cast<index_t>(shape.h);
  ix = pixel % W;
  y = (pixel / W) % H;
  n = pixel / (W * H);
  const flow_t* f = flow + n * fs.s0 + y * fs.s1 + ix * fs.s2;
  return pixel_taps<acc_t>(y, ix, static_cast<acc_t>(f[0]), static_cast<acc_t>(f[fs.s3]), shape.h, shape.w,
                           xs.s2, xs.s3, align_corners, padding_mode, interpolation);
}

// kChannelsFastest (channels_last output): consecutive threads take consecutive channel groups of
// one pixel; otherwise consecutive pixels of one channel group. Either way the writes coalesce.
template <typename scalar_t, typename flow_t, typename index_t, bool kChannelsFastest>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, const flow_t* __restrict__ flow,
                   scalar_t* __restrict__ out, Shape shape, Strides4<index_t> xs, Strides4<index_t> os,
                   Strides4<index_t> fs, index_t pixels, index_t groups, index_t total, int64_t interpolation,
                   int64_t padding_mode, bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t idx = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= total) return;
  const index_t c0 = (kChannelsFastest ? idx % groups : idx / pixels) * kForwardChannels;
  const index_t pixel = kChannelsFastest ? idx / groups : idx % pixels;
  index_t n, y, ix;
  const PixelTaps<acc_t> t =
      taps_of_pixel<acc_t>(pixel, flow, shape, xs, fs, interpolation, padding_mode, align_corners, n, y, ix);
  const index_t cn = min(static_cast<index_t>(kForwardChannels), static_cast<index_t>(shape.c) - c0);
  const scalar_t* in = x + n * xs.s0 + c0 * xs.s1;
  scalar_t* o = out + n * os.s0 + c0 * os.s1 + y * os.s2 + ix * os.s3;
  for (index_t c = 0; c < cn; ++c) {
    acc_t v = t.nan_out ? static_cast<acc_t>(NAN) : acc_t(0);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k < t.num_taps && t.valid[k]) {
        v += t.weight[k] * static_cast<acc_t>(in[static_cast<index_t>(t.offset[k]) + c * xs.s1]);
      }
    }
    o[c * os.s1] = static_cast<scalar_t>(v);
  }
}

void forward_into(const at::Tensor& x, const at::Tensor& flow, const at::Tensor& out, int64_t interpolation,
                  int64_t padding_mode, bool align_corners) {
  check_flow_warp_args("vsr_fast::flow_warp", x, flow, interpolation, padding_mode);
  TORCH_CHECK(x.is_cuda(), "vsr_fast::flow_warp: CUDA kernel called with x on ", x.device());
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type() && out.device() == x.device(),
              "vsr_fast::flow_warp: output must match x ", x.sizes(), " ", x.scalar_type(), ", got ",
              out.sizes(), " ", out.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  if (out.numel() == 0) return;
  const Shape shape{x.size(0), x.size(1), x.size(2), x.size(3)};
  const int64_t pixels = shape.n * shape.h * shape.w;
  const int64_t groups = (shape.c + kForwardChannels - 1) / kForwardChannels;
  const int64_t total = pixels * groups;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const bool channels_fastest = out.stride(1) == 1 && shape.c > 1;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vsr_fast::flow_warp", [&] {
    auto launch = [&](auto index_zero, auto flow_zero, auto channels_fastest_c) {
      using index_t = decltype(index_zero);
      using flow_t = decltype(flow_zero);
      forward_kernel<scalar_t, flow_t, index_t, decltype(channels_fastest_c)::value>
          <<<blocks, kThreads, 0, stream>>>(
              x.const_data_ptr<scalar_t>(), flow.const_data_ptr<flow_t>(), out.mutable_data_ptr<scalar_t>(),
              shape, strides_of<index_t>(x), strides_of<index_t>(out), strides_of<index_t>(flow),
              static_cast<index_t>(pixels), static_cast<index_t>(groups), static_cast<index_t>(total),
              interpolation, padding_mode, align_corners);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    const bool small = fits_int32({&x, &flow, &out}, total, kThreads);
    with_flow_type<scalar_t>(x, flow, [&](auto flow_zero) {
      auto with_index = [&](auto index_zero) {
        channels_fastest ? launch(index_zero, flow_zero, std::true_type{})
                         : launch(index_zero, flow_zero, std::false_type{});
      };
      small ? with_index(int32_t{0}) : with_index(int64_t{0});
    });
  });
}

at::Tensor flow_warp_cuda(const at::Tensor& x, const at::Tensor& flow, int64_t interpolation,
                          int64_t padding_mode, bool align_corners) {
  at::Tensor out = at::empty_like(x);
  forward_into(x, flow, out, interpolation, padding_mode, align_corners);
  return out;
}

template <typename scalar_t, typename flow_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                    const flow_t* __restrict__ flow, at::opmath_type<scalar_t>* __restrict__ grad_x,
                    flow_t* __restrict__ grad_flow, Shape shape, Strides4<index_t> gs, Strides4<index_t> xs,
                    Strides4<index_t> fs, Strides4<index_t> gfs, index_t pixels, int64_t interpolation,
                    int64_t padding_mode, bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t pixel = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (pixel >= pixels) return;
  index_t n, y, ix;
  const PixelTaps<acc_t> t =
      taps_of_pixel<acc_t>(pixel, flow, shape, xs, fs, interpolation, padding_mode, align_corners, n, y, ix);
  const scalar_t* g = grad_out + n * gs.s0 + y * gs.s2 + ix * gs.s3;
  const scalar_t* in = x + n * xs.s0;
  acc_t* gx = grad_x ? grad_x + n * xs.s0 : nullptr;
  acc_t dflow_x = acc_t(0), dflow_y = acc_t(0);
  const index_t C = static_cast<index_t>(shape.c);
  for (index_t c = 0; c < C; ++c) {
    const acc_t go = static_cast<acc_t>(g[c * gs.s1]);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k < t.num_taps && t.valid[k]) {
        const index_t off = static_cast<index_t>(t.offset[k]) + c * xs.s1;
        if (gx) atomicAdd(gx + off, t.weight[k] * go);
        if (grad_flow) {
          const acc_t v = static_cast<acc_t>(in[off]) * go;
          dflow_x += t.dweight_dx[k] * v;
          dflow_y += t.dweight_dy[k] * v;
        }
      }
    }
  }
  if (grad_flow) {  // a NaN/inf position (t.nan_out) has no valid tap: its flow gradient stays 0
    flow_t* gf = grad_flow + n * gfs.s0 + y * gfs.s1 + ix * gfs.s2;
    gf[0] = static_cast<flow_t>(dflow_x);
    gf[gfs.s3] = static_cast<flow_t>(dflow_y);
  }
}

std::tuple<at::Tensor, at::Tensor> flow_warp_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x_in,
                                                           const at::Tensor& flow, int64_t interpolation,
                                                           int64_t padding_mode, bool align_corners,
                                                           std::array<bool, 2> output_mask) {
  check_flow_warp_backward_args(grad_out, x_in, flow, interpolation, padding_mode);
  TORCH_CHECK(x_in.is_cuda(), "vsr_fast::_flow_warp_backward: CUDA kernel called with x on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  // named copies, not structured bindings: C++17 lambdas (torch < 2.10 builds) cannot capture those
  const BackwardSetup setup = setup_flow_warp_backward(x_in, flow, output_mask[0], output_mask[1]);
  const at::Tensor& x = setup.x;
  const at::Tensor& grad_x = setup.grad_x;
  const at::Tensor& grad_flow = setup.grad_flow;
  const bool need_x = setup.need_x, need_flow = setup.need_flow;
  if (need_x) at::globalContext().alertNotDeterministic("vsr_fast::_flow_warp_backward (CUDA grad_x)");
  if (!setup.work) return {grad_x, grad_flow};
  const Shape shape{x.size(0), x.size(1), x.size(2), x.size(3)};
  const int64_t pixels = shape.n * shape.h * shape.w;
  const int64_t blocks = (pixels + kThreads - 1) / kThreads;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "vsr_fast::_flow_warp_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
        const at::Tensor grad_x_acc = need_x ? grad_x_accumulator(x, grad_x, acc_type) : at::Tensor();
        auto launch = [&](auto index_zero, auto flow_zero) {
          using index_t = decltype(index_zero);
          using flow_t = decltype(flow_zero);
          backward_kernel<scalar_t, flow_t, index_t><<<blocks, kThreads, 0, stream>>>(
              grad_out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
              flow.const_data_ptr<flow_t>(), need_x ? grad_x_acc.mutable_data_ptr<acc_t>() : nullptr,
              need_flow ? grad_flow.mutable_data_ptr<flow_t>() : nullptr, shape,
              strides_of<index_t>(grad_out), strides_of<index_t>(x), strides_of<index_t>(flow),
              need_flow ? strides_of<index_t>(grad_flow) : Strides4<index_t>{0, 0, 0, 0},
              static_cast<index_t>(pixels), interpolation, padding_mode, align_corners);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        const bool small = fits_int32({&grad_out, &x, &flow}, pixels, kThreads);
        with_flow_type<scalar_t>(x, flow, [&](auto flow_zero) {
          small ? launch(int32_t{0}, flow_zero) : launch(int64_t{0}, flow_zero);
        });
        if (need_x && !grad_x_acc.is_same(grad_x)) grad_x.copy_(grad_x_acc);
      });
  return {grad_x, grad_flow};
}

}  // namespace

void flow_warp_cuda_into(const at::Tensor& x, const at::Tensor& flow, const at::Tensor& out,
                         int64_t interpolation, int64_t padding_mode, bool align_corners) {
  forward_into(x, flow, out, interpolation, padding_mode, align_corners);
}

}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CUDA, m) {
  m.impl("flow_warp", &vsr_fast::flow_warp_cuda);
  m.impl("_flow_warp_backward", &vsr_fast::flow_warp_backward_cuda);
}
