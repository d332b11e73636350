// RMSNorm forward and backward for fp32, fp16 and bf16 with fp32 accumulation.
//
//   forward:  rstd = 1 / sqrt(mean(x^2) + eps);  n = T(x * rstd);  y = T(w * n)
//   backward: dn = dy * w;  c = mean(dn * x * rstd);  dx = rstd * (dn - x * rstd * c);  dw = sum_rows dy * n
//
// The rounding of the normalised row to the input dtype before the weight is applied is the LLaMA /
// Hugging Face convention that tinylm.kernels.rms_norm.rms_norm_reference follows.
//
// Layout: a block holds `blockDim.y` row groups of `blockDim.x` threads (a multiple of 32, up to 512); a group
// owns one row at a time. Each thread keeps ITEMS packs of the row in registers: 16-byte packs when the hidden
// size and every pointer allow it (VEC = 16 / sizeof(T)), single elements otherwise (VEC = 1), so any hidden
// size works. Rows longer than the group's registers hold are read in chunks, twice (the second read mostly
// hits L2). Per-row sums: warp shuffles, then one float per warp in shared memory.
//
// Forward: one block per row group; x and w are loaded together, 16 elements per thread, with a register cap
// that keeps many warps resident (the measured optimum on H200; see benchmarks/bench_rms_norm.py).
// Backward: a persistent grid (one wave of blocks looping over rows) with w staged in shared memory once per
// block and the block's dw sums in fp32 shared memory, so each block writes one partial row of dw at the end
// and a small second kernel sums the partial rows: (#blocks x hidden) floats instead of (rows x hidden).
//
// Only light headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers for nothing.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "rms_norm_utils.cuh"

namespace {

using namespace tinylm_rms_norm;
constexpr int kMinBlockThreads = 256;
constexpr int kMaxThreads = 512;  // threads of a row group
#ifndef TLK_PACK_ITEMS  // tuning knobs (-D at compile time); the defaults measured best on H200
#define TLK_PACK_ITEMS 4
#endif
#ifndef TLK_FWD_MIN_BLOCKS
#define TLK_FWD_MIN_BLOCKS 2
#endif
#ifndef TLK_FWD_MIN_BLOCKS_16
#define TLK_FWD_MIN_BLOCKS_16 3
#endif
#ifndef TLK_BWD_MIN_BLOCKS
#define TLK_BWD_MIN_BLOCKS 1
#endif

// Backward: packs a thread holds per row and tensor: 4 x 16 bytes on the vector path, 16 elements otherwise.
__host__ __device__ constexpr int items_per_thread(int vec) { return vec == 1 ? 16 : TLK_PACK_ITEMS; }

// Forward: one block per row group (measured faster than a persistent grid). Threads keep 16 elements of x
// and w each (2-byte types: 2 packs) under a register cap (fp32: 64, 2-byte types: 40) so that many warps,
// and their loads, are in flight.
template <typename T, int VEC>
constexpr int fwd_items() { return VEC == 1 ? 16 : 16 / VEC; }
template <typename T, int VEC>
constexpr int fwd_min_blocks() { return VEC > 1 && sizeof(T) == 2 ? TLK_FWD_MIN_BLOCKS_16 : TLK_FWD_MIN_BLOCKS; }

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads, fwd_min_blocks<T, VEC>())
    rms_norm_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                        float* __restrict__ rstd, int64_t rows, int n, float eps) {
  constexpr int ITEMS = fwd_items<T, VEC>();
  using P = Pack<T, VEC>;
  __shared__ float red[kMaxThreads / kWarp];
  const int nvec = n / VEC;
  const int chunk = ITEMS * blockDim.x;
  const bool single = nvec <= chunk;  // `single`: the row fits the group's registers
  const P* wv = reinterpret_cast<const P*>(w);
  P xr[ITEMS], wr[ITEMS];
  // A grid-stride loop, though the launcher starts a block per row group: ptxas then fits fp32 in 64
  // registers without spilling (the loop-free form spilled).
  for (int64_t g = blockIdx.x; g < (rows + blockDim.y - 1) / blockDim.y; g += gridDim.x) {
    const int64_t row = g * blockDim.y + threadIdx.y;
    const bool valid = row < rows;
    const P* xrow = reinterpret_cast<const P*>(x) + (valid ? row : 0) * nvec;
    float ss = 0.f;
    for (int c0 = 0; c0 < nvec; c0 += chunk) {
      load_chunk<T, VEC, ITEMS>(xrow, xr, c0, nvec, valid);
      if (single) load_chunk<T, VEC, ITEMS>(wv, wr, 0, nvec, true);  // in flight with x (L1 hits mostly)
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        float f[VEC];
        unpack(xr[i], f);
#pragma unroll
        for (int k = 0; k < VEC; ++k) ss += f[k] * f[k];
      }
    }
    __syncthreads();  // the previous row's readers of `red` are done (only with several rows per block)
    ss = row_sum(ss, red);  // every thread of the block reaches this barrier, valid row or not
    const float r = rsqrtf(ss / static_cast<float>(n) + eps);
    if (!valid) continue;
    launder(xr);
    if (threadIdx.x == 0) rstd[row] = r;
    P* yrow = reinterpret_cast<P*>(y) + row * nvec;
    for (int c0 = 0; c0 < nvec; c0 += chunk) {
      if (!single) {
        load_chunk<T, VEC, ITEMS>(xrow, xr, c0, nvec, true);
        load_chunk<T, VEC, ITEMS>(wv, wr, c0, nvec, true);
      }
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int j = c0 + i * blockDim.x + threadIdx.x;
        if (j >= nvec) continue;
        float f[VEC], wf[VEC];
        unpack(xr[i], f);
        unpack(wr[i], wf);
#pragma unroll
        for (int k = 0; k < VEC; ++k) f[k] *= r;
        round_to<T>(f);
#pragma unroll
        for (int k = 0; k < VEC; ++k) f[k] *= wf[k];
        yrow[j] = pack<T>(f);
      }
    }
  }
}

// dw_part has one row per block (gridDim.x x n, fp32). With the row in registers ("single") a block sums its
// rows' dw in shared memory and writes its row once at the end; longer rows (one row group per block, see the
// launcher) add into the block's own row of a zeroed dw_part as they go.
template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads, TLK_BWD_MIN_BLOCKS)
    rms_norm_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                        const float* __restrict__ rstd, T* __restrict__ dx, float* __restrict__ dw_part,
                        int64_t rows, int n) {
  constexpr int ITEMS = items_per_thread(VEC);
  using P = Pack<T, VEC>;
  __shared__ float red[2][kMaxThreads / kWarp];
  extern __shared__ float4 smem[];
  const int nvec = n / VEC;
  const int chunk = ITEMS * blockDim.x;
  const bool single = nvec <= chunk;
  // This thread's dw sums, laid out [group][item][k][thread] so that a warp's accesses hit 32 banks:
  // acc[(i * VEC + k) * blockDim.x] is element k of pack i.
  const int acc_per_group = ITEMS * VEC * blockDim.x;
  float* acc_all = reinterpret_cast<float*>(smem);
  float* acc = acc_all + threadIdx.y * acc_per_group + threadIdx.x;
  if (single) {
#pragma unroll
    for (int e = 0; e < ITEMS * VEC; ++e) acc[e * blockDim.x] = 0.f;
  }
  P* w_smem = reinterpret_cast<P*>(acc_all + (single ? acc_per_group * blockDim.y : 0));
  const P* wv = stage_weight(reinterpret_cast<const P*>(w), w_smem, nvec, single);
  const P* xv = reinterpret_cast<const P*>(x);
  const P* gv = reinterpret_cast<const P*>(dy);
  P* dxv = reinterpret_cast<P*>(dx);
  float* my_part = dw_part + static_cast<int64_t>(blockIdx.x) * n;
  P xr[ITEMS], gr[ITEMS], wr[ITEMS];
  const int64_t groups = (rows + blockDim.y - 1) / blockDim.y;
  int parity = 0;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x, parity ^= 1) {
    const int64_t row = g * blockDim.y + threadIdx.y;
    const bool valid = row < rows;
    const int64_t base = (valid ? row : 0) * nvec;
    const float r = valid ? rstd[row] : 0.f;
    float dot = 0.f;  // sum(dy * w * x) over the row
    for (int c0 = 0; c0 < nvec; c0 += chunk) {
      load_chunk<T, VEC, ITEMS>(xv + base, xr, c0, nvec, valid);
      load_chunk<T, VEC, ITEMS>(gv + base, gr, c0, nvec, valid);
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int j = c0 + i * blockDim.x + threadIdx.x;
        if (j >= nvec) continue;
        wr[i] = wv[j];
        float xf[VEC], gf[VEC], wf[VEC];
        unpack(xr[i], xf);
        unpack(gr[i], gf);
        unpack(wr[i], wf);
#pragma unroll
        for (int k = 0; k < VEC; ++k) dot += gf[k] * wf[k] * xf[k];
      }
    }
    const float c = row_sum(dot, red[parity]) * r / static_cast<float>(n);  // mean(dn * x * rstd)
    if (!valid) continue;
    launder(xr);
    launder(gr);
    for (int c0 = 0; c0 < nvec; c0 += chunk) {
      if (!single) {
        load_chunk<T, VEC, ITEMS>(xv + base, xr, c0, nvec, true);
        load_chunk<T, VEC, ITEMS>(gv + base, gr, c0, nvec, true);
      }
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int j = c0 + i * blockDim.x + threadIdx.x;
        if (j >= nvec) continue;
        wr[i] = wv[j];
        float xh[VEC], gf[VEC], wf[VEC], out[VEC];
        unpack(xr[i], xh);
        unpack(gr[i], gf);
        unpack(wr[i], wf);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          xh[k] *= r;
          out[k] = r * (gf[k] * wf[k] - xh[k] * c);
        }
        dxv[base + j] = pack<T>(out);
        round_to<T>(xh);  // dw sums dy * n with n as the forward rounded it
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          if (single) {
            acc[(i * VEC + k) * blockDim.x] += gf[k] * xh[k];
          } else {
            my_part[j * VEC + k] += gf[k] * xh[k];  // this block's own row: no other writer
          }
        }
      }
    }
  }
  if (!single) return;
  if (blockDim.y > 1) __syncthreads();  // the first group sums every group's slots of its columns
  if (threadIdx.y > 0) return;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int j = i * blockDim.x + threadIdx.x;
    if (j >= nvec) continue;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      float sum = 0.f;
      for (int y = 0; y < blockDim.y; ++y) sum += acc[y * acc_per_group + (i * VEC + k) * blockDim.x];
      my_part[j * VEC + k] = sum;
    }
  }
}

// dw[col] = sum over the partial rows; a block sums 32 columns with 16 threads per column.
constexpr int kReduceCols = 32;
constexpr int kReduceRows = 16;

template <typename T>
__global__ void dw_reduce_kernel(const float* __restrict__ part, T* __restrict__ dw, int parts, int n) {
  __shared__ float s[kReduceRows][kReduceCols + 1];
  const int col = blockIdx.x * kReduceCols + threadIdx.x;
  float a = 0.f;
  if (col < n) {
#pragma unroll 4
    for (int p = threadIdx.y; p < parts; p += kReduceRows) a += part[static_cast<int64_t>(p) * n + col];
  }
  s[threadIdx.y][threadIdx.x] = a;
  __syncthreads();
  if (threadIdx.y == 0 && col < n) {
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < kReduceRows; ++i) total += s[i][threadIdx.x];
    dw[col] = from_float<T>(total);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Launch geometry: row groups of `block.x` threads (ITEMS packs each cover the row, up to kMaxThreads),
// `block.y` of them per block (at least kMinBlockThreads threads), and a persistent grid of `grid` blocks.
struct Geometry {
  dim3 block;
  int64_t grid;
  bool single;  // the whole row fits in the group's registers
  size_t smem;  // dynamic shared memory (single rows only): acc_floats per thread and w
};

// blocks_per_sm: 0 = as many as fit (occupancy), > 0 = at most that many, < 0 = one block per row group.
template <typename T, int VEC, typename Kernel>
Geometry geometry(Kernel kernel, int64_t rows, int n, int items, int acc_floats, bool stage_w,
                  int64_t blocks_per_sm) {
  const int nvec = n / VEC;
  const int want = (nvec + items - 1) / items;
  const int threads = std::min(kMaxThreads, std::max(kWarp, (want + kWarp - 1) / kWarp * kWarp));
  const int per_block = threads >= kMinBlockThreads ? 1 : kMinBlockThreads / threads;
  const int64_t groups = (rows + per_block - 1) / per_block;
  const bool single = nvec <= threads * items;
  const size_t smem = single ? sizeof(float) * acc_floats * threads * per_block + (stage_w ? sizeof(T) * n : 0) : 0;
  Geometry geo{dim3(threads, per_block), groups, single, smem};
  if (smem > 32 * 1024)  // above 48 KB (static included) a kernel must opt in
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  if (blocks_per_sm < 0) return geo;
  int occupancy = 1, device = 0, sms = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, kernel, threads * per_block, smem));
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  occupancy = std::max(occupancy, 1);
  if (blocks_per_sm > 0) occupancy = std::min<int>(occupancy, static_cast<int>(blocks_per_sm));
  // Balance the rows: every block gets the same number of row groups, give or take one.
  const int64_t slots = static_cast<int64_t>(occupancy) * sms;
  const int64_t rounds = (groups + slots - 1) / slots;
  geo.grid = (groups + rounds - 1) / rounds;
  return geo;
}

template <typename T, int VEC>
struct LaunchFwd {
  static void run(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, at::Tensor& rstd, int64_t rows, int n,
                  float eps) {
    const auto kernel = rms_norm_fwd_kernel<T, VEC>;
    const Geometry geo = geometry<T, VEC>(kernel, rows, n, fwd_items<T, VEC>(), 0, false, -1);
    kernel<<<static_cast<unsigned>(geo.grid), geo.block, geo.smem, c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<const T*>(x.data_ptr()), static_cast<const T*>(w.data_ptr()), static_cast<T*>(y.data_ptr()),
        rstd.data_ptr<float>(), rows, n, eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

template <typename T, int VEC>
struct LaunchBwd {
  static void run(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& rstd,
                  at::Tensor& dx, at::Tensor& dw, int64_t rows, int n, int64_t blocks_per_sm) {
    const auto kernel = rms_norm_bwd_kernel<T, VEC>;
    const int acc = items_per_thread(VEC) * VEC;  // always persistent: one partial dw row per block
    const Geometry geo =
        geometry<T, VEC>(kernel, rows, n, items_per_thread(VEC), acc, true, std::max<int64_t>(blocks_per_sm, 0));
    auto fopts = x.options().dtype(at::kFloat);
    at::Tensor part = geo.single ? at::empty({geo.grid, n}, fopts) : at::zeros({geo.grid, n}, fopts);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    kernel<<<static_cast<unsigned>(geo.grid), geo.block, geo.smem, stream>>>(
        static_cast<const T*>(dy.data_ptr()), static_cast<const T*>(x.data_ptr()),
        static_cast<const T*>(w.data_ptr()), rstd.data_ptr<float>(), static_cast<T*>(dx.data_ptr()),
        part.data_ptr<float>(), rows, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dw_reduce_kernel<T><<<(n + kReduceCols - 1) / kReduceCols, dim3(kReduceCols, kReduceRows), 0, stream>>>(
        part.data_ptr<float>(), static_cast<T*>(dw.data_ptr()), static_cast<int>(geo.grid), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.is_cuda() && w.is_cuda(), op, ": x and weight must be CUDA tensors");
  TORCH_CHECK(x.device() == w.device(), op, ": x and weight are on different devices");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), op, ": x (", x.scalar_type(), ") and weight (",
              w.scalar_type(), ") must have the same dtype");
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
              ": dtype must be float32, float16 or bfloat16, got ", t);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, op, ": x needs a non-empty last dimension");
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(-1), op, ": weight must have shape (", x.size(-1), ",)");
  TORCH_CHECK(x.size(-1) <= INT32_MAX, op, ": hidden size too large");
}

// Runs Launch<T, VEC>::run(args...) for dtype t, on the 16-byte path when n and every pointer allow it.
template <template <typename, int> class Launch, typename... Args>
void dispatch(at::ScalarType t, int n, std::initializer_list<const void*> ptrs, Args&&... args) {
  bool vec_ok = true;
  for (const void* p : ptrs) vec_ok = vec_ok && aligned16(p);
  switch (t) {
    case at::kFloat:
      if (vec_ok && n % 4 == 0) return Launch<float, 4>::run(args...);
      return Launch<float, 1>::run(args...);
    case at::kHalf:
      if (vec_ok && n % 8 == 0) return Launch<__half, 8>::run(args...);
      return Launch<__half, 1>::run(args...);
    case at::kBFloat16:
      if (vec_ok && n % 8 == 0) return Launch<__nv_bfloat16, 8>::run(args...);
      return Launch<__nv_bfloat16, 1>::run(args...);
    default:
      TORCH_CHECK(false, "rms_norm: unsupported dtype ", t);
  }
}

}  // namespace

// Returns (y, rstd): y like x (contiguous), rstd of shape x.shape[:-1] in float32.
std::vector<at::Tensor> rms_norm_fwd_cuda(const at::Tensor& x_in, const at::Tensor& w_in, double eps) {
  check_inputs("rms_norm_fwd", x_in, w_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = w_in.contiguous();
  const int n = static_cast<int>(x.size(-1));
  const int64_t rows = x.numel() / n;
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor rstd = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  if (rows == 0) return {y, rstd};
  dispatch<LaunchFwd>(x.scalar_type(), n, {x.data_ptr(), w.data_ptr(), y.data_ptr()}, x, w, y, rstd, rows, n,
                      static_cast<float>(eps));
  return {y, rstd};
}

// Returns (dx, dw) for the forward above, given its rstd.
std::vector<at::Tensor> rms_norm_bwd_cuda(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& w_in,
                                          const at::Tensor& rstd_in, int64_t blocks_per_sm) {
  check_inputs("rms_norm_bwd", x_in, w_in);
  TORCH_CHECK(dy_in.sizes() == x_in.sizes() && dy_in.scalar_type() == x_in.scalar_type(),
              "rms_norm_bwd: dy must match x in shape and dtype");
  TORCH_CHECK(rstd_in.scalar_type() == at::kFloat && rstd_in.numel() * x_in.size(-1) == x_in.numel(),
              "rms_norm_bwd: rstd must be float32 with one value per row");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dy = dy_in.contiguous();
  const at::Tensor w = w_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  const int n = static_cast<int>(x.size(-1));
  const int64_t rows = x.numel() / n;
  at::Tensor dx = at::empty(x.sizes(), x.options());
  at::Tensor dw = at::empty({n}, w.options());
  if (rows == 0) return {dx, dw.zero_()};
  dispatch<LaunchBwd>(x.scalar_type(), n, {x.data_ptr(), dy.data_ptr(), w.data_ptr(), dx.data_ptr()}, dy, x, w,
                      rstd, dx, dw, rows, n, blocks_per_sm);
  return {dx, dw};
}
