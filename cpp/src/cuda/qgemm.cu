// Quantized GEMM for prefill (fp16 / bf16 activations): per 64 x 64 output tile and
// 32-deep K step, the activations and the dequantized weights are staged in shared
// memory and multiplied on the tensor cores with wmma (four warps, 32 x 32 each).
// Where the output tiles are too few to fill the GPU (decode-sized M, small N), K is
// split across blocks that add their partial tiles into an fp32 buffer.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

#include "cuda/device.cuh"
#include "cuda/qmatmul_kernels.h"
#include "cuda/runtime.h"

namespace slmops::cuda {
namespace {

constexpr int BM = kQgemmTileM, BN = kQgemmTileN, BK = kQgemmTileK;
constexpr int kThreads = 128;
constexpr int kPadAB = 8;  // row padding of the staged tiles against bank conflicts (wmma ldm: multiple of 8)
constexpr int kPadC = 4;

// wmma with bf16 needs sm_80; fp16 sm_70. Other architectures compile an empty body
// (the host never launches it there, see tensor_core_supported).
template <typename T>
__device__ constexpr bool mma_compiled() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return true;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  return std::is_same_v<T, __half>;
#else
  return false;
#endif
}

template <QuantFormat F, typename T>
__global__ void __launch_bounds__(kThreads)
    qgemm_kernel(QuantRows w, const T* __restrict__ x, int64_t M, const float* __restrict__ bias, T* __restrict__ y,
                 float* __restrict__ partial, int64_t k_per_split) {
  if constexpr (mma_compiled<T>()) {
    using namespace nvcuda;
    __shared__ __align__(32) T As[BM][BK + kPadAB];
    __shared__ __align__(32) T Bs[BN][BK + kPadAB];
    __shared__ __align__(32) float Cs[BM][BN + kPadC];
    const int64_t N = w.rows, K = w.K;
    const int64_t m0 = int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN;
    const int64_t k_begin = int64_t(blockIdx.z) * k_per_split;
    const int64_t k_end = k_begin + k_per_split < K ? k_begin + k_per_split : K;
    const int warp = threadIdx.x >> 5, wm = warp >> 1, wn = warp & 1;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
      // Consecutive threads take consecutive k: coalesced reads of x rows and weight rows.
      for (int i = threadIdx.x; i < BM * BK; i += kThreads) {
        const int r = i / BK, c = i % BK;
        const int64_t m = m0 + r, k = k0 + c;
        As[r][c] = (m < M && k < k_end) ? x[m * K + k] : from_f32<T>(0.0f);
      }
      for (int i = threadIdx.x; i < BN * BK; i += kThreads) {
        const int r = i / BK, c = i % BK;
        const int64_t n = n0 + r, k = k0 + c;
        Bs[r][c] = from_f32<T>((n < N && k < k_end) ? dequant_element<F>(w, n, k) : 0.0f);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];  // B(k, n) = Bs[n][k]
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &As[wm * 32 + i * 16][kk], BK + kPadAB);
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &Bs[wn * 32 + j * 16][kk], BK + kPadAB);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(&Cs[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], BN + kPadC, wmma::mem_row_major);
    __syncthreads();
    for (int i = threadIdx.x; i < BM * BN; i += kThreads) {
      const int r = i / BN, c = i % BN;
      const int64_t m = m0 + r, n = n0 + c;
      if (m >= M || n >= N) continue;
      if (partial)
        atomicAdd(partial + m * N + n, Cs[r][c]);
      else
        y[m * N + n] = from_f32<T>(Cs[r][c] + (bias ? bias[n] : 0.0f));
    }
  }
}

// y = partial + bias after a split-K run.
template <typename T>
__global__ void finish_split_kernel(const float* __restrict__ partial, const float* __restrict__ bias, int64_t M,
                                    int64_t N, T* __restrict__ y) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N; i += stride)
    y[i] = from_f32<T>(partial[i] + (bias ? bias[i % N] : 0.0f));
}

template <QuantFormat F, typename T>
void launch_typed(const QuantRows& w, const T* x, int64_t M, const float* bias, T* y, int split_k,
                  cudaStream_t stream) {
  const int64_t N = w.rows, K = w.K;
  const int64_t k_steps = (K + BK - 1) / BK;
  const int64_t k_per_split = ((k_steps + split_k - 1) / split_k) * BK;
  const int64_t splits = (K + k_per_split - 1) / k_per_split;
  const dim3 grid(unsigned((N + BN - 1) / BN), unsigned((M + BM - 1) / BM), unsigned(splits));
  if (splits == 1) {
    qgemm_kernel<F, T><<<grid, kThreads, 0, stream>>>(w, x, M, bias, y, nullptr, k_per_split);
    check_launch("qgemm kernel launch");
    return;
  }
  StreamBuffer partial(size_t(M * N) * sizeof(float), stream);
  check(cudaMemsetAsync(partial.get(), 0, size_t(M * N) * sizeof(float), stream), "cudaMemsetAsync");
  qgemm_kernel<F, T><<<grid, kThreads, 0, stream>>>(w, x, M, bias, y, partial.as<float>(), k_per_split);
  check_launch("qgemm kernel launch");
  finish_split_kernel<T>
      <<<elementwise_blocks(M * N), kElementwiseThreads, 0, stream>>>(partial.as<float>(), bias, M, N, y);
  check_launch("qgemm split-K finish launch");
}

template <QuantFormat F>
void launch_format(const QuantRows& w, const void* x, DType dtype, int64_t M, const float* bias, void* y, int split_k,
                   cudaStream_t stream) {
  if (dtype == DType::kF16)
    return launch_typed<F>(w, static_cast<const __half*>(x), M, bias, static_cast<__half*>(y), split_k, stream);
  if (dtype == DType::kBF16)
    return launch_typed<F>(w, static_cast<const __nv_bfloat16*>(x), M, bias, static_cast<__nv_bfloat16*>(y), split_k,
                           stream);
  throw std::invalid_argument("qgemm: fp16 or bf16 activations");
}

}  // namespace

void launch_qgemm(QuantFormat f, const QuantRows& w, const void* x, DType dtype, int64_t M, const float* bias, void* y,
                  int split_k, cudaStream_t stream) {
  switch (f) {
    case QuantFormat::kInt4: return launch_format<QuantFormat::kInt4>(w, x, dtype, M, bias, y, split_k, stream);
    case QuantFormat::kNF4: return launch_format<QuantFormat::kNF4>(w, x, dtype, M, bias, y, split_k, stream);
    case QuantFormat::kInt8: return launch_format<QuantFormat::kInt8>(w, x, dtype, M, bias, y, split_k, stream);
    default: throw std::invalid_argument("qgemm: int4, nf4 and int8 only");
  }
}

}  // namespace slmops::cuda
