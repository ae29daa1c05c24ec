// Device code of the fused residual-block kernel of vsr_fast::residual_trunk (CUDA, sm_80+):
//   out = x + conv3x3(relu(conv3x3(x, w1) + b1), w2) + b2      for C = 64, NHWC, fp16 / bf16
// with tensor-core MMAs (mma.sync m16n8k16, fp32 accumulation) fed by ldmatrix from shared memory.
//
// One CTA computes an 8 x 16 output tile. conv2 needs relu(conv1) on the (8+2) x (16+2) halo around
// it, which needs x on (8+4) x (16+4); both stay in shared memory, so the intermediate activation
// never goes to global memory. The price is recomputing conv1 on the halo (180 instead of 128 pixels).
//
// Shared memory (bytes): x tile 240 px * 128 = 30720, relu(conv1) 180 px * 128 = 23040, weights
// streamed one tap (64 x 64 x 2 = 8192) at a time through a 3-slot cp.async ring = 24576; 78336 in
// all, so two CTAs fit an SM on sm_80 (164 KB) and on sm_90 (228 KB).
//
// Every 128-byte pixel row (64 channels) is stored with its eight 16-byte chunks XOR-swizzled by the
// pixel index, so the 8 rows an ldmatrix phase reads (8 consecutive pixels) hit 8 different bank
// groups instead of one.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace vsr_fast {
namespace residual_block_mma {

constexpr int kC = 64;                                 // channels (in = out)
constexpr int kTileH = 8, kTileW = 16;                 // output tile
constexpr int kMidH = kTileH + 2, kMidW = kTileW + 2;  // relu(conv1) tile
constexpr int kInH = kTileH + 4, kInW = kTileW + 4;    // x tile
constexpr int kMidPixels = kMidH * kMidW;              // 180
constexpr int kInPixels = kInH * kInW;                 // 240
constexpr int kThreads = 256;                          // 8 warps
constexpr int kPixelBytes = kC * 2;                    // one swizzled row: 8 chunks of 16 bytes
constexpr int kTapElems = kC * kC;                     // one tap of one conv: [n = 64][k = 64]
constexpr int kTapBytes = kTapElems * 2;
constexpr int kTaps = 9;
constexpr int kStages = 2 * kTaps;  // conv1 taps then conv2 taps, one weight slot each
constexpr int kWSlots = 3;          // cp.async ring depth for the weights
constexpr int kInBytes = kInPixels * kPixelBytes;
constexpr int kMidBytes = kMidPixels * kPixelBytes;
constexpr int kSmemBytes = kInBytes + kMidBytes + kWSlots * kTapBytes;
// Packed weights per block: [conv (2)][tap (9)][n (64)][k (64)], k contiguous.
constexpr int kBlockWeightElems = kStages * kTapElems;

// conv1: 12 m-tiles of 16 halo pixels (192 >= 180) x 64 output channels; warp w takes m-tiles
// 3*(w%4) .. +2 and output channels 32*(w/4) .. +31. conv2: 8 output rows x 64 channels; warp w takes
// rows 2*(w%4), +1 and the same channel half.
constexpr int kConv1MTilesPerWarp = 3;
static_assert(4 * kConv1MTilesPerWarp * 16 >= kMidPixels, "conv1 m-tiles must cover the halo tile");
static_assert(kTileW == 16 && kTileH == 8, "conv2 maps one output row to one m-tile, 2 rows per warp");
static_assert(kThreads == 256, "the warp layout above assumes 8 warps");

// Conversions spelled out: torch builds extensions with __CUDA_NO_HALF_CONVERSIONS__ and friends.
template <typename T>
struct MmaType;
template <>
struct MmaType<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t v) {
    return __half22float2(*reinterpret_cast<const __half2*>(&v));
  }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};
template <>
struct MmaType<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t v) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

// Byte offset of 16-byte chunk `chunk` (channels 8*chunk .. 8*chunk+7) of `pixel` in a swizzled tile.
__device__ __forceinline__ uint32_t swizzled(int pixel, int chunk) {
  return static_cast<uint32_t>(pixel * kPixelBytes + ((chunk ^ (pixel & 7)) << 4));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

// "memory" clobbers keep the compiler from moving shared-memory traffic across these (and across
// __syncthreads) since it cannot see what the asm reads or writes.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  // src-size 0 reads nothing and zero-fills the 16 bytes: the conv's zero padding for free.
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                  uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Queue weight stage s (conv s / 9, tap s % 9) into its ring slot. Always commits a group (maybe
// empty) so that the group count, and hence cp_async_wait's argument, is the same for every stage.
template <typename T>
__device__ __forceinline__ void issue_weight_stage(uint32_t w_smem, const T* __restrict__ w, int s) {
  if (s < kStages) {
    const T* src = w + static_cast<int64_t>(s) * kTapElems;
    const uint32_t slot = w_smem + static_cast<uint32_t>((s % kWSlots) * kTapBytes);
#pragma unroll
    for (int j = 0; j < kTapElems / 8 / kThreads; ++j) {
      const int i = static_cast<int>(threadIdx.x) + j * kThreads;
      const int n = i >> 3, chunk = i & 7;
      cp_async_16(slot + swizzled(n, chunk), src + n * kC + chunk * 8, true);
    }
  }
  cp_async_commit();
}

// Waits for stage s's weights (and, at s = 0, the x tile), makes them visible to every warp, and
// queues stage s + kWSlots - 1 into the slot that stage s - 1 used: the barrier guarantees every warp
// is done reading it.
template <typename T>
__device__ __forceinline__ void advance_pipeline(uint32_t w_smem, const T* __restrict__ w, int s) {
  cp_async_wait<kWSlots - 2>();
  __syncthreads();
  issue_weight_stage(w_smem, w, s + kWSlots - 1);
}

#endif  // __CUDA_ARCH__ >= 800

// x, out: [N, H, W, 64] dense (channels_last storage), 16-byte aligned. w: this block's packed
// weights (kBlockWeightElems), b: [2][64] (conv1 bias, conv2 bias). out must not alias x.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    residual_block_kernel(const T* __restrict__ x, T* __restrict__ out, const T* __restrict__ w,
                          const T* __restrict__ b, int height, int width, int tiles_x, int tiles_y) {
  const int tile = static_cast<int>(blockIdx.x);
  const int tx = tile % tiles_x;
  const int ty = (tile / tiles_x) % tiles_y;
  const int64_t img = tile / (tiles_x * tiles_y);
  const int y0 = ty * kTileH, x0 = tx * kTileW;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Pack = MmaType<T>;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t in_smem = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t mid_smem = in_smem + kInBytes;
  const uint32_t w_smem = mid_smem + kMidBytes;
  unsigned char* const in_ptr = smem;
  unsigned char* const mid_ptr = smem + kInBytes;

  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;  // mma C/D fragment row group and column pair
  const int nhalf = warp >> 2;            // this warp's 32 output channels
  const T* const x_img = x + img * height * width * kC;

  // x tile with a 2-pixel border; outside the image cp.async zero-fills.
  for (int i = static_cast<int>(threadIdx.x); i < kInPixels * 8; i += kThreads) {
    const int pixel = i >> 3, chunk = i & 7;
    const int gy = y0 - 2 + pixel / kInW, gx = x0 - 2 + pixel % kInW;
    const bool inside = gy >= 0 && gy < height && gx >= 0 && gx < width;
    const T* src = inside ? x_img + (static_cast<int64_t>(gy) * width + gx) * kC + chunk * 8 : x;
    cp_async_16(in_smem + swizzled(pixel, chunk), src, inside);
  }
#pragma unroll
  for (int s = 0; s < kWSlots - 1; ++s) issue_weight_stage(w_smem, w, s);  // group 0 also holds x

  // ldmatrix.x4 lane roles. A (activations, row-major 16 x 16): lane gives row lane % 16 at channel
  // half lane / 16. B (weights stored [n][k], i.e. col-major k x n): lane gives n row
  // (lane % 8) + 8 * (lane / 16) at channel half (lane / 8) % 2, so the four 8x8 matrices come back
  // as {b0, b1} of n-tile 2j and {b0, b1} of n-tile 2j + 1.
  const int a_half = lane >> 4;
  const int b_row = nhalf * 32 + (lane & 7) + ((lane >> 4) << 3);
  const int b_half = (lane >> 3) & 1;

  // ---- conv1 on the halo tile ----------------------------------------------------------------
  {
    const int mgroup = warp & 3;
    int a_pixel[kConv1MTilesPerWarp];  // x-tile pixel under this lane's A row at tap (0, 0)
#pragma unroll
    for (int i = 0; i < kConv1MTilesPerWarp; ++i) {
      // rows past the halo tile (180..191) read a valid pixel; their results are discarded
      const int m = min((mgroup * kConv1MTilesPerWarp + i) * 16 + (lane & 15), kMidPixels - 1);
      a_pixel[i] = (m / kMidW) * kInW + m % kMidW;
    }
    float acc[kConv1MTilesPerWarp][4][4];
#pragma unroll
    for (int i = 0; i < kConv1MTilesPerWarp; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll 1
    for (int s = 0; s < kTaps; ++s) {
      advance_pipeline(w_smem, w, s);
      const uint32_t w_slot = w_smem + static_cast<uint32_t>((s % kWSlots) * kTapBytes);
      const int shift = (s / 3) * kInW + s % 3;
#pragma unroll
      for (int kk = 0; kk < kC / 16; ++kk) {
        uint32_t a[kConv1MTilesPerWarp][4];
#pragma unroll
        for (int i = 0; i < kConv1MTilesPerWarp; ++i)
          ldmatrix_x4(a[i], in_smem + swizzled(a_pixel[i] + shift, kk * 2 + a_half));
        uint32_t bf[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j) ldmatrix_x4(bf[j], w_slot + swizzled(b_row + 16 * j, kk * 2 + b_half));
#pragma unroll
        for (int i = 0; i < kConv1MTilesPerWarp; ++i)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
            mma_16816<T>(acc[i][nt], a[i], bf[nt >> 1][(nt & 1) * 2], bf[nt >> 1][(nt & 1) * 2 + 1]);
      }
    }

    // relu(conv1 + b1) into the halo tile; zero where the halo leaves the image, because conv2's
    // zero padding applies to relu(conv1), which does not exist there.
    float bias[4][2];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int n = nhalf * 32 + nt * 8 + 2 * t;
      bias[nt][0] = Pack::to_float(b[n]);
      bias[nt][1] = Pack::to_float(b[n + 1]);
    }
#pragma unroll
    for (int i = 0; i < kConv1MTilesPerWarp; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int m = (mgroup * kConv1MTilesPerWarp + i) * 16 + g + 8 * h;
        if (m < kMidPixels) {
          const int gy = y0 - 1 + m / kMidW, gx = x0 - 1 + m % kMidW;
          const bool inside = gy >= 0 && gy < height && gx >= 0 && gx < width;
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            float v0 = acc[i][nt][2 * h] + bias[nt][0];
            float v1 = acc[i][nt][2 * h + 1] + bias[nt][1];
            // `v < 0 ? 0 : v` keeps NaN, as torch.relu does
            v0 = inside ? (v0 < 0.f ? 0.f : v0) : 0.f;
            v1 = inside ? (v1 < 0.f ? 0.f : v1) : 0.f;
            const int n = nhalf * 32 + nt * 8 + 2 * t;
            *reinterpret_cast<uint32_t*>(mid_ptr + swizzled(m, n >> 3) + (n & 7) * 2) = Pack::pack(v0, v1);
          }
        }
      }
    }
  }

  // ---- conv2 on the output tile, + b2 + x ------------------------------------------------------
  {
    const int row0 = 2 * (warp & 3);
    int a_pixel[2];  // halo-tile pixel under this lane's A row at tap (0, 0)
#pragma unroll
    for (int i = 0; i < 2; ++i) a_pixel[i] = (row0 + i) * kMidW + (lane & 15);
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    // The barrier in advance_pipeline at s = kTaps also publishes the halo tile written above.
#pragma unroll 1
    for (int s = kTaps; s < kStages; ++s) {
      advance_pipeline(w_smem, w, s);
      const uint32_t w_slot = w_smem + static_cast<uint32_t>((s % kWSlots) * kTapBytes);
      const int tap = s - kTaps;
      const int shift = (tap / 3) * kMidW + tap % 3;
#pragma unroll
      for (int kk = 0; kk < kC / 16; ++kk) {
        uint32_t a[2][4];
#pragma unroll
        for (int i = 0; i < 2; ++i)
          ldmatrix_x4(a[i], mid_smem + swizzled(a_pixel[i] + shift, kk * 2 + a_half));
        uint32_t bf[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j) ldmatrix_x4(bf[j], w_slot + swizzled(b_row + 16 * j, kk * 2 + b_half));
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
            mma_16816<T>(acc[i][nt], a[i], bf[nt >> 1][(nt & 1) * 2], bf[nt >> 1][(nt & 1) * 2 + 1]);
      }
    }
    cp_async_wait<0>();  // only empty groups are left; leave nothing in flight at exit

    float bias[4][2];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int n = nhalf * 32 + nt * 8 + 2 * t;
      bias[nt][0] = Pack::to_float(b[kC + n]);
      bias[nt][1] = Pack::to_float(b[kC + n + 1]);
    }
    T* const out_img = out + img * height * width * kC;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int gy = y0 + row0 + i;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int col = g + 8 * h;
        const int gx = x0 + col;
        if (gy < height && gx < width) {
          const int res_pixel = (row0 + i + 2) * kInW + col + 2;  // x under this output pixel
          T* const dst = out_img + (static_cast<int64_t>(gy) * width + gx) * kC;
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            const int n = nhalf * 32 + nt * 8 + 2 * t;
            const float2 r = Pack::unpack(
                *reinterpret_cast<const uint32_t*>(in_ptr + swizzled(res_pixel, n >> 3) + (n & 7) * 2));
            // one rounding of x + conv2 + b2 (the eager path rounds conv2 + b2 first)
            const float v0 = r.x + (acc[i][nt][2 * h] + bias[nt][0]);
            const float v1 = r.y + (acc[i][nt][2 * h + 1] + bias[nt][1]);
            *reinterpret_cast<uint32_t*>(dst + n) = Pack::pack(v0, v1);
          }
        }
      }
    }
  }
#else
  // Built for an architecture without mma.m16n8k16 / cp.async (the host never launches it there).
  // Should it run anyway (a PTX-only build JIT-compiled for a newer GPU from this branch), NaNs make
  // the self-check, or a forced run, fail loudly instead of returning stale memory.
  T* const out_img = out + img * height * width * kC;
  for (int i = static_cast<int>(threadIdx.x); i < kTileH * kTileW * kC; i += kThreads) {
    const int gy = y0 + i / (kTileW * kC), gx = x0 + (i / kC) % kTileW;
    if (gy < height && gx < width)
      out_img[(static_cast<int64_t>(gy) * width + gx) * kC + i % kC] = MmaType<T>::from_float(NAN);
  }
#endif
}

}  // namespace residual_block_mma
}  // namespace vsr_fast
