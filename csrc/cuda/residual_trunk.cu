// CUDA kernels of vsr_fast::residual_trunk (and the trunk body propagation_step runs, cuda_kernels.h).
//
// Two implementations of the residual blocks behind one op, picked by VSR_FAST_TRUNK_IMPL
// (auto | library | fused, default auto):
//   library: channels_last cuDNN convolutions (conv1 + bias + ReLU fused by cuDNN where it can),
//            bias/activation/residual epilogues as one in-place elementwise pass; every dtype.
//   fused:   one kernel per residual block (csrc/cuda/residual_block_mma.cuh), C = 64,
//            fp16/bf16, sm_80+.
// auto takes the fused kernel only after it has passed a one-time self-check against the library
// path on this device and dtype (docs/design.md, "Kernel conventions"), and the library path otherwise.
//
// The input convolution always runs on the library path (C_in is not 64). Activations are
// channels_last throughout; the output is converted to the input's suggested memory format at the end.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/cudnn_convolution.h>
#include <ATen/ops/cudnn_convolution_add_relu.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/stack.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_kernels.h"
#include "residual_block_mma.cuh"
#include "vsr_fast/residual_trunk.h"

namespace vsr_fast {
namespace {

namespace rb = residual_block_mma;

constexpr int kThreads = 256;
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// ---------------------------------------------------------------------------------------------
// Implementation choice

enum class Impl { kAuto, kLibrary, kFused };

// Read on every call (not cached) so that tests and benchmarks can switch paths in one process.
Impl requested_impl(const char* op) {
  const char* v = std::getenv("VSR_FAST_TRUNK_IMPL");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Impl::kAuto;
  if (std::strcmp(v, "library") == 0) return Impl::kLibrary;
  if (std::strcmp(v, "fused") == 0) return Impl::kFused;
  TORCH_CHECK(false, op, ": VSR_FAST_TRUNK_IMPL must be auto, library or fused, got '", v, "'");
}

bool stream_is_capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

// ---------------------------------------------------------------------------------------------
// Elementwise epilogues of the library path (channels_last dense, so the channel is index % C)

enum class Epilogue { kLeakyRelu, kRelu, kResidual };

// h and c may be the same tensor (in-place epilogues), so neither is __restrict__.
template <typename scalar_t, Epilogue kMode, typename index_t>
__global__ void __launch_bounds__(kThreads)
    epilogue_kernel(scalar_t* h, const scalar_t* c, const scalar_t* __restrict__ bias, index_t total,
                    index_t channels) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t i = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    const acc_t v = static_cast<acc_t>(c[i]) + static_cast<acc_t>(bias[i % channels]);
    acc_t r;
    if constexpr (kMode == Epilogue::kLeakyRelu) {
      r = v > acc_t(0) ? v : v * acc_t(0.1);  // NaN stays NaN, as F.leaky_relu
    } else if constexpr (kMode == Epilogue::kRelu) {
      r = v < acc_t(0) ? acc_t(0) : v;  // NaN stays NaN, as torch.relu
    } else {
      r = static_cast<acc_t>(h[i]) + v;
    }
    h[i] = static_cast<scalar_t>(r);
  }
}

// h = epilogue(c + bias[channel]); h, c: same sizes, both channels_last dense.
template <Epilogue kMode>
void run_epilogue(at::Tensor& h, const at::Tensor& c, const at::Tensor& bias) {
  TORCH_INTERNAL_ASSERT(h.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                        c.is_contiguous(at::MemoryFormat::ChannelsLast) && h.sizes() == c.sizes());
  const int64_t total = h.numel();
  if (total == 0) return;
  const at::Tensor b = bias.contiguous();
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65536);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "vsr_fast::residual_trunk", [&] {
    if (total < kInt32Max - blocks * kThreads) {
      epilogue_kernel<scalar_t, kMode, int32_t><<<blocks, kThreads, 0, stream>>>(
          h.mutable_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
          static_cast<int32_t>(total), static_cast<int32_t>(h.size(1)));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      epilogue_kernel<scalar_t, kMode, int64_t>
          <<<blocks, kThreads, 0, stream>>>(h.mutable_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
                                            b.const_data_ptr<scalar_t>(), total, h.size(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Library path: cuDNN / ATen convolutions

struct ConvSettings {
  bool cudnn;  // call cuDNN directly (out= variants, fused conv+bias+ReLU)
  bool benchmark, deterministic, allow_tf32;
};

ConvSettings conv_settings(const at::Tensor& x) {
  auto& ctx = at::globalContext();
  const auto st = x.scalar_type();
  // fp64 and cuDNN-disabled runs go through at::convolution, which picks whatever backend it likes.
  const bool dtype_ok = st == at::kFloat || st == at::kHalf || st == at::kBFloat16;
  return {dtype_ok && ctx.userEnabledCuDNN() && at::Context::hasCuDNN(), ctx.benchmarkCuDNN(),
          ctx.deterministicCuDNN() || ctx.deterministicAlgorithms(), ctx.allowTF32CuDNN(at::Float32Op::CONV)};
}

// Direct cuDNN calls skip at::convolution's own checks, so keep them to the cases it would send to
// cuDNN without splitting: 32-bit sizes and at least one input channel.
bool direct_cudnn_ok(const ConvSettings& cs, const at::Tensor& in, const at::Tensor& out) {
  return cs.cudnn && in.size(1) > 0 && in.numel() <= kInt32Max && out.numel() <= kInt32Max;
}

// out = conv3x3(in, w), stride 1, zero padding 1, no bias; out is channels_last dense.
void conv3x3_into(const at::Tensor& in, const at::Tensor& w, at::Tensor& out, const ConvSettings& cs) {
  if (direct_cudnn_ok(cs, in, out)) {
    at::cudnn_convolution_out(out, in, w, /*padding=*/{1, 1}, /*stride=*/{1, 1}, /*dilation=*/{1, 1},
                              /*groups=*/1, cs.benchmark, cs.deterministic, cs.allow_tf32);
  } else {
    out.copy_(at::convolution(in, w, std::nullopt, /*stride=*/{1, 1}, /*padding=*/{1, 1},
                              /*dilation=*/{1, 1}, /*transposed=*/false, /*output_padding=*/{0, 0},
                              /*groups=*/1));
  }
}

// Whether cuDNN's fused conv + bias + ReLU (runtime-fusion engines) works for a (device, dtype,
// TF32) combination. Not every combination has an engine (fp32 without TF32 may not), and the
// failure is a host-side exception before anything is queued, so the first call tries it and the
// answer is remembered. Never tried during graph capture.
class CudnnFusionSupport {
 public:
  // 1 supported, 0 not, -1 unknown
  int state(const std::string& key) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = states_.find(key);
    return it == states_.end() ? -1 : it->second;
  }
  void set(const std::string& key, bool ok) {
    std::lock_guard<std::mutex> lock(mu_);
    states_[key] = ok ? 1 : 0;
  }

 private:
  std::mutex mu_;
  std::map<std::string, int> states_;
};

CudnnFusionSupport& cudnn_fusion_support() {
  static CudnnFusionSupport support;
  return support;
}

// Returns relu(conv3x3(h, w) + b); `scratch` (same sizes as h, channels_last) is used when cuDNN's
// fusion is not.
at::Tensor conv3x3_bias_relu(const at::Tensor& h, const at::Tensor& w, const at::Tensor& b,
                             at::Tensor& scratch, const ConvSettings& cs) {
  if (direct_cudnn_ok(cs, h, scratch)) {
    const std::string key = std::to_string(h.get_device()) + ":" + c10::toString(h.scalar_type()) + ":" +
                            (cs.allow_tf32 ? "tf32" : "fp32");
    int state = cudnn_fusion_support().state(key);
    if (state == -1 && !stream_is_capturing()) {
      try {
        at::Tensor t = at::cudnn_convolution_add_relu(h, w, h, 0.0, b, {1, 1}, {1, 1}, {1, 1}, 1);
        cudnn_fusion_support().set(key, true);
        return t;
      } catch (const std::exception&) {  // c10::Error, or a cudnn_frontend exception
        cudnn_fusion_support().set(key, false);
        state = 0;
      }
    }
    if (state == 1) {
      // z = h with alpha 0: cudnn_convolution_relu passes its own uninitialised output as z, and
      // 0 * (stale NaN/inf) is NaN unless cuDNN skips the term; h is initialised.
      return at::cudnn_convolution_add_relu(h, w, h, 0.0, b, /*stride=*/{1, 1}, /*padding=*/{1, 1},
                                            /*dilation=*/{1, 1}, /*groups=*/1);
    }
  }
  conv3x3_into(h, w, scratch, cs);
  run_epilogue<Epilogue::kRelu>(scratch, scratch, b);
  return scratch;
}

// Per-call channels_last copies of the block weights as views of one packed buffer: two copy
// kernels for the whole trunk, instead of cuDNN making one per convolution. Never cached: weights
// may change between calls.
std::vector<at::Tensor> channels_last_weights(at::TensorList ws) {
  std::vector<at::Tensor> out;
  if (ws.empty()) return out;
  const at::Tensor packed = at::stack(ws).permute({0, 1, 3, 4, 2}).contiguous();  // [L, n, ky, kx, k]
  out.reserve(ws.size());
  for (int64_t i = 0; i < static_cast<int64_t>(ws.size()); ++i)
    out.push_back(packed[i].permute({0, 3, 1, 2}));
  return out;
}

// h += conv3x3(relu(conv3x3(h, w1) + b1), w2) + b2, in place.
void library_block(at::Tensor& h, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                   const at::Tensor& b2, at::Tensor& scratch_t, at::Tensor& scratch_c,
                   const ConvSettings& cs) {
  const at::Tensor t = conv3x3_bias_relu(h, w1, b1, scratch_t, cs);
  conv3x3_into(t, w2, scratch_c, cs);
  run_epilogue<Epilogue::kResidual>(h, scratch_c, b2);
}

at::Tensor empty_channels_last(const at::Tensor& like, int64_t channels) {
  return at::empty({like.size(0), channels, like.size(2), like.size(3)},
                   like.options().memory_format(at::MemoryFormat::ChannelsLast));
}

// leaky_relu(conv3x3(x, w0) + b0, 0.1) as a fresh channels_last tensor.
at::Tensor input_conv(const at::Tensor& x, const at::Tensor& w0, const at::Tensor& b0,
                      const ConvSettings& cs) {
  at::Tensor h = empty_channels_last(x, w0.size(0));
  conv3x3_into(x, w0.contiguous(at::MemoryFormat::ChannelsLast), h, cs);
  run_epilogue<Epilogue::kLeakyRelu>(h, h, b0);
  return h;
}

void library_blocks(at::Tensor& h, at::TensorList weights, at::TensorList biases, const ConvSettings& cs) {
  const int64_t blocks = static_cast<int64_t>(weights.size() / 2);
  if (blocks == 0) return;
  const std::vector<at::Tensor> w = channels_last_weights(weights.slice(1));
  // scratch_t is only touched when cuDNN's fused conv+ReLU is unavailable; both live for the call.
  at::Tensor scratch_t = at::empty_like(h);
  at::Tensor scratch_c = at::empty_like(h);
  for (int64_t k = 0; k < blocks; ++k) {
    library_block(h, w[2 * k], biases[1 + 2 * k], w[2 * k + 1], biases[2 + 2 * k], scratch_t, scratch_c, cs);
  }
}

// ---------------------------------------------------------------------------------------------
// Fused path

template <typename T>
struct CudaType;
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

struct DeviceInfo {
  int major = 0, minor = 0, smem_optin = 0;
};

DeviceInfo device_info(int device) {
  DeviceInfo d;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return d;
}

// Empty string when the fused kernel can run these blocks; otherwise why not.
std::string fused_unsupported_reason(const at::Tensor& h, int64_t channels) {
  if (channels != rb::kC) return "it needs 64 channels, got " + std::to_string(channels);
  if (h.scalar_type() != at::kHalf && h.scalar_type() != at::kBFloat16)
    return std::string("it needs float16 or bfloat16, got ") + c10::toString(h.scalar_type());
  const DeviceInfo d = device_info(h.get_device());
  if (d.major < 8)
    return "it needs compute capability >= 8.0, got " + std::to_string(d.major) + "." +
           std::to_string(d.minor);
  if (d.smem_optin < rb::kSmemBytes)
    return "it needs " + std::to_string(rb::kSmemBytes) +
           " bytes of shared memory per block, the device allows " + std::to_string(d.smem_optin);
  const int64_t tiles =
      h.size(0) * ((h.size(2) + rb::kTileH - 1) / rb::kTileH) * ((h.size(3) + rb::kTileW - 1) / rb::kTileW);
  if (tiles > kInt32Max || h.size(2) > kInt32Max / 2 || h.size(3) > kInt32Max / 2)
    return "the input is too large for its 32-bit tile grid, got " + c10::str(h.sizes());
  return "";
}

template <typename T>
void allow_large_smem(const void* kernel, int device) {
  // cudaFuncSetAttribute is per device; once each is enough.
  static std::mutex mu;
  static std::set<int> done;
  std::lock_guard<std::mutex> lock(mu);
  if (done.count(device)) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, rb::kSmemBytes));
  done.insert(device);
}

// out = block(in) with this block's packed weights ([2][3][3][64][64]) and biases ([2][64]).
void launch_fused_block(const at::Tensor& in, at::Tensor& out, const at::Tensor& w_packed,
                        const at::Tensor& b_packed, int64_t block) {
  TORCH_INTERNAL_ASSERT(in.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                        out.is_contiguous(at::MemoryFormat::ChannelsLast) && in.size(1) == rb::kC &&
                        in.sizes() == out.sizes() && !in.is_same(out));
  TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(in.const_data_ptr()) % 16 == 0 &&
                        reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0 &&
                        reinterpret_cast<uintptr_t>(w_packed.const_data_ptr()) % 16 == 0);
  if (in.numel() == 0) return;
  const int height = static_cast<int>(in.size(2)), width = static_cast<int>(in.size(3));
  const int tiles_x = (width + rb::kTileW - 1) / rb::kTileW;
  const int tiles_y = (height + rb::kTileH - 1) / rb::kTileH;
  const int64_t tiles = in.size(0) * tiles_x * tiles_y;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(in.scalar_type(), "vsr_fast::residual_trunk", [&] {
    using T = typename CudaType<scalar_t>::type;
    const auto kernel = rb::residual_block_kernel<T>;
    allow_large_smem<T>(reinterpret_cast<const void*>(kernel), in.get_device());
    const T* w =
        reinterpret_cast<const T*>(w_packed.const_data_ptr<scalar_t>()) + block * rb::kBlockWeightElems;
    const T* b = reinterpret_cast<const T*>(b_packed.const_data_ptr<scalar_t>()) + block * 2 * rb::kC;
    kernel<<<static_cast<unsigned>(tiles), rb::kThreads, rb::kSmemBytes, stream>>>(
        reinterpret_cast<const T*>(in.const_data_ptr<scalar_t>()),
        reinterpret_cast<T*>(out.mutable_data_ptr<scalar_t>()), w, b, height, width, tiles_x, tiles_y);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Block weights as [L][ky][kx][n][k] (k contiguous: the kernel's B operand rows), biases [L][64].
std::tuple<at::Tensor, at::Tensor> pack_for_fused(at::TensorList weights, at::TensorList biases) {
  return {at::stack(weights).permute({0, 3, 4, 1, 2}).contiguous(), at::stack(biases).contiguous()};
}

// Runs the blocks with the fused kernel, ping-ponging between h and one more buffer; returns the
// buffer that holds the result.
at::Tensor fused_blocks(at::Tensor h, at::TensorList weights, at::TensorList biases) {
  const int64_t blocks = static_cast<int64_t>(weights.size() / 2);
  if (blocks == 0 || h.numel() == 0) return h;
  auto [w_packed, b_packed] = pack_for_fused(weights.slice(1), biases.slice(1));
  at::Tensor other = at::empty_like(h);
  for (int64_t k = 0; k < blocks; ++k) {
    launch_fused_block(h, other, w_packed, b_packed, k);
    std::swap(h, other);
  }
  return h;
}

// ---------------------------------------------------------------------------------------------
// Run-time self-check of the fused kernel (docs/design.md, "Kernel conventions")
//
// On first use per (device, dtype) the fused kernel and the library path run one block on a small
// random probe (N = 2, 19 x 23: partial tiles on both axes, image borders on every side, a second
// image) and must agree within a few units in the last place of the dtype, relative to the probe's
// magnitude. On mismatch, or if the kernel throws, auto mode uses the library path for that device
// and dtype from then on, with a warning naming the error. The check syncs the host once (.item()),
// so it never runs while the current stream is being captured into a CUDA graph: a capture that
// comes before any eager call uses the library path (and says so once); warm up eagerly before
// capturing to get the fused kernel inside graphs.
//
// Test hook: VSR_FAST_TRUNK_SELFCHECK_INJECT. Each distinct value is a separate cache entry, and
// values starting with "fail" corrupt the fused result before the comparison, so that tests can
// exercise the fallback and the warning without a broken kernel.

class FusedSelfCheck {
 public:
  // Whether auto mode may use the fused kernel for h's device and dtype.
  bool passed(const at::Tensor& h) {
    const char* hook_env = std::getenv("VSR_FAST_TRUNK_SELFCHECK_INJECT");
    const std::string hook = hook_env ? hook_env : "";
    const std::string key =
        std::to_string(h.get_device()) + ":" + c10::toString(h.scalar_type()) + ":" + hook;
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = results_.find(key);
    if (it != results_.end()) return it->second;
    if (stream_is_capturing()) {
      TORCH_WARN_ONCE(
          "vsr_fast::residual_trunk: the fused CUDA residual-block kernel has not been self-checked on this "
          "device yet and the check cannot run during CUDA graph capture; the captured graph uses the "
          "library (cuDNN) path. Run the op once eagerly before capturing to use the fused kernel.");
      return false;
    }
    const bool ok = run_probe(h.device(), h.scalar_type(), hook.rfind("fail", 0) == 0);
    results_[key] = ok;
    return ok;
  }

 private:
  static void warn_cannot_run(const std::string& where, const char* what) {
    TORCH_WARN(
        "vsr_fast::residual_trunk: the fused CUDA residual-block kernel could not run its self-check on ",
        where, " (", what,
        "); the library (cuDNN) path is used on this device for this dtype. "
        "Set VSR_FAST_TRUNK_IMPL=library to skip the check.");
  }

  static bool run_probe(c10::Device device, at::ScalarType dtype, bool corrupt) {
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    auto gen = at::detail::createCPUGenerator(20240521);  // private: leaves the user's RNG streams alone
    const at::Tensor x_cpu = at::rand({2, rb::kC, 19, 23}, gen, opts).mul(2).sub(1);
    const at::Tensor w_cpu = at::randn({2, rb::kC, rb::kC, 3, 3}, gen, opts).div(24.0);  // ~1/sqrt(fan_in)
    const at::Tensor b_cpu = at::randn({2, rb::kC}, gen, opts).mul(0.1);
    const auto dev = at::TensorOptions().device(device).dtype(dtype);
    const at::Tensor x = x_cpu.to(dev).contiguous(at::MemoryFormat::ChannelsLast);
    const std::vector<at::Tensor> w = {w_cpu[0].to(dev), w_cpu[1].to(dev)};
    const std::vector<at::Tensor> b = {b_cpu[0].to(dev), b_cpu[1].to(dev)};
    const std::string where = device.str() + ", " + c10::toString(dtype);
    double err = 0, scale = 0;
    try {
      const ConvSettings cs = conv_settings(x);
      at::Tensor lib = x.clone(at::MemoryFormat::ChannelsLast);
      at::Tensor scratch_t = at::empty_like(lib), scratch_c = at::empty_like(lib);
      const std::vector<at::Tensor> w_cl = channels_last_weights(w);
      library_block(lib, w_cl[0], b[0], w_cl[1], b[1], scratch_t, scratch_c, cs);
      auto [w_packed, b_packed] = pack_for_fused(w, b);
      at::Tensor fused = at::empty_like(x);
      launch_fused_block(x, fused, w_packed, b_packed, 0);
      if (corrupt) fused = fused.add(1);
      const at::Tensor lib32 = lib.to(at::kFloat);
      err = fused.to(at::kFloat).sub(lib32).abs().max().item<double>();  // NaN propagates
      scale = lib32.abs().max().item<double>();
    } catch (const c10::Error& e) {
      warn_cannot_run(where, e.what_without_backtrace());
      return false;
    } catch (const std::exception& e) {
      warn_cannot_run(where, e.what());
      return false;
    }
    const double eps = dtype == at::kHalf ? 9.765625e-4 : 7.8125e-3;  // 2^-10, 2^-7: one ulp at 1
    const double tol = 8 * eps * std::max(1.0, scale);
    if (!(err <= tol)) {
      TORCH_WARN("vsr_fast::residual_trunk: the fused CUDA residual-block kernel FAILED its self-check on ",
                 where, ": max abs error ", err, " against the library (cuDNN) path on a probe of magnitude ",
                 scale, " (tolerance ", tol,
                 "). The fused path is disabled on this device for this dtype; results "
                 "come from the library path. Please report this with your GPU model and driver.");
      return false;
    }
    return true;
  }

  std::mutex mu_;
  std::map<std::string, bool> results_;
};

FusedSelfCheck& fused_self_check() {
  static FusedSelfCheck check;
  return check;
}

// The op's output: `h` (channels_last dense) in the memory format the fake kernel promises.
at::Tensor in_format(const at::Tensor& h, at::MemoryFormat format) {
  if (format == at::MemoryFormat::ChannelsLast) return h;
  return h.contiguous(format);
}

at::Tensor residual_trunk_cuda(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  const char* op = "vsr_fast::residual_trunk";
  check_residual_trunk_args(x, weights, biases);
  TORCH_CHECK(x.is_cuda(), op, ": CUDA kernel called with x on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat format = x.suggest_memory_format();
  const int64_t channels = weights[0].size(0);
  if (x.size(0) * channels * x.size(2) * x.size(3) == 0) {
    return at::empty({x.size(0), channels, x.size(2), x.size(3)}, x.options().memory_format(format));
  }
  return in_format(
      residual_trunk_cuda_channels_last(op, x.contiguous(at::MemoryFormat::ChannelsLast), weights, biases),
      format);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The trunk body, shared with propagation_step (cuda_kernels.h)

at::Tensor residual_trunk_cuda_channels_last(const char* op, const at::Tensor& x_cl, at::TensorList weights,
                                             at::TensorList biases) {
  const ConvSettings cs = conv_settings(x_cl);
  at::Tensor h = input_conv(x_cl, weights[0], biases[0], cs);
  const int64_t blocks = static_cast<int64_t>(weights.size() / 2);
  if (blocks == 0 || h.numel() == 0) return h;

  bool fused = false;
  switch (requested_impl(op)) {
    case Impl::kLibrary:
      break;
    case Impl::kFused: {
      const std::string why = fused_unsupported_reason(h, h.size(1));
      TORCH_CHECK(why.empty(), op,
                  ": VSR_FAST_TRUNK_IMPL=fused, but the fused residual-block kernel cannot run "
                  "here: ",
                  why, " (trunk activations ", h.sizes(), ")");
      fused = true;
      break;
    }
    case Impl::kAuto:
      fused = fused_unsupported_reason(h, h.size(1)).empty() && fused_self_check().passed(h);
      break;
  }
  if (fused) return fused_blocks(h, weights, biases);
  library_blocks(h, weights, biases, cs);
  return h;
}

}  // namespace vsr_fast

TORCH_LIBRARY_IMPL(vsr_fast, CUDA, m) { m.impl("residual_trunk", &vsr_fast::residual_trunk_cuda); }
