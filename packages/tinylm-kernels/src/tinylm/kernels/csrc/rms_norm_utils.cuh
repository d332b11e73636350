// Device helpers of rms_norm.cu: element conversions, 16-byte packs, chunked row loads, row reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace tinylm_rms_norm {

constexpr int kWarp = 32;

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// VEC elements moved as one access (16 bytes for the vector path).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Pack <-> floats. 2-byte types go through 32-bit words (bf16: shifts; fp16: f16x2 conversions) so that no
// element sits alone in a 16-bit register: that would double the registers per element.
template <typename T, int VEC>
__device__ __forceinline__ void unpack(const Pack<T, VEC>& p, float (&f)[VEC]) {
  if constexpr (sizeof(T) == 2 && VEC % 2 == 0) {
#pragma unroll
    for (int k = 0; k < VEC; k += 2) {
      const uint32_t u = reinterpret_cast<const uint32_t*>(p.v)[k / 2];
      if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        f[k] = __uint_as_float(u << 16);
        f[k + 1] = __uint_as_float(u & 0xffff0000u);
      } else {
        const float2 t = __half22float2(*reinterpret_cast<const __half2*>(&u));
        f[k] = t.x;
        f[k + 1] = t.y;
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) f[k] = to_float(p.v[k]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> pack(const float (&f)[VEC]) {
  Pack<T, VEC> p;
  if constexpr (sizeof(T) == 2 && VEC % 2 == 0) {
#pragma unroll
    for (int k = 0; k < VEC; k += 2) {
      uint32_t u;
      if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(f[k], f[k + 1]);
        u = *reinterpret_cast<const uint32_t*>(&h);
      } else {
        const __half2 h = __floats2half2_rn(f[k], f[k + 1]);
        u = *reinterpret_cast<const uint32_t*>(&h);
      }
      reinterpret_cast<uint32_t*>(p.v)[k / 2] = u;
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) p.v[k] = from_float<T>(f[k]);
  }
  return p;
}

// Rounds each value to T and back: the forward's rounding of the normalised row.
template <typename T, int VEC>
__device__ __forceinline__ void round_to(float (&f)[VEC]) {
  if constexpr (!std::is_same_v<T, float>) unpack(pack<T, VEC>(f), f);
}

// Tells the compiler the packed registers changed, so it converts them to float again where needed instead of
// keeping float copies alive across a row's reduction (which doubles the registers of 2-byte types and costs
// occupancy, i.e. loads in flight).
template <typename T, int VEC, int ITEMS>
__device__ __forceinline__ void launder(Pack<T, VEC> (&p)[ITEMS]) {
  if constexpr (sizeof(T) == 2 && VEC % 2 == 0) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
#pragma unroll
      for (int k = 0; k < VEC / 2; ++k) asm volatile("" : "+r"(reinterpret_cast<uint32_t*>(p[i].v)[k]));
  }
}

// Loads chunk `c0` of a row: pack i of this thread is c0 + i * blockDim.x + threadIdx.x, so a warp reads
// consecutive packs. Out-of-range packs read as zero.
template <typename T, int VEC, int ITEMS>
__device__ __forceinline__ void load_chunk(const Pack<T, VEC>* __restrict__ src, Pack<T, VEC> (&dst)[ITEMS],
                                           int c0, int nvec, bool valid) {
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int j = c0 + i * blockDim.x + threadIdx.x;
    if (valid && j < nvec) {
      dst[i] = src[j];
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) dst[i].v[k] = from_float<T>(0.f);
    }
  }
}

// Copies w into shared memory once per block (rows in registers only; longer rows read w from global).
template <typename P>
__device__ __forceinline__ const P* stage_weight(const P* __restrict__ w, P* smem, int nvec, bool single) {
  if (!single) return w;
  for (int t = threadIdx.y * blockDim.x + threadIdx.x; t < nvec; t += blockDim.x * blockDim.y) smem[t] = w[t];
  __syncthreads();
  return smem;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the row group of the calling thread. `red` holds one float per warp of the block. Between two
// calls on one buffer a barrier must separate the reads of the first from the writes of the second: callers
// alternate between two buffers (each call's barrier then serves) or put a barrier before the call.
__device__ __forceinline__ float row_sum(float v, float* red) {
  v = warp_sum(v);
  const int warps_per_row = blockDim.x / kWarp;
  if (warps_per_row == 1) return v;
  float* mine = red + threadIdx.y * warps_per_row;
  if ((threadIdx.x & (kWarp - 1)) == 0) mine[threadIdx.x / kWarp] = v;
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < warps_per_row; ++i) s += mine[i];
  return s;
}

}  // namespace tinylm_rms_norm
