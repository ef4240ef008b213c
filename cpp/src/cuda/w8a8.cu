// W8A8 on cuBLASLt: each activation row is quantized to int8 with one scale (absmax/127,
// round half to even, as the CPU int8_row mode), the int8 x int8 -> int32 product runs on
// cuBLASLt's integer tensor-core kernels, and one elementwise pass applies both scales.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/device.cuh"
#include "cuda/qmatmul_kernels.h"
#include "cuda/runtime.h"

namespace slmops::cuda {
namespace {

constexpr int kThreads = 256;

// max that keeps a NaN (fmaxf drops it): a row holding NaN or Inf then gets a NaN or Inf
// scale, and 0 * that scale makes its whole output row NaN, as on the CPU, instead of
// codes that hide the NaN in a finite row.
__device__ __forceinline__ float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

// One block per activation row: absmax, then the codes.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    quantize_rows_kernel(const T* __restrict__ x, int64_t K, int8_t* __restrict__ q, float* __restrict__ scales) {
  __shared__ float scratch[32];
  const T* row = x + int64_t(blockIdx.x) * K;
  float amax = 0.0f;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) amax = nan_max(amax, fabsf(load_f32(row + k)));
  // max over the block through the sum helper's layout: reduce warps, then the warp maxima
  for (int o = 16; o > 0; o >>= 1) amax = nan_max(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = amax;
  __syncthreads();
  amax = 0.0f;
  for (int i = 0; i < kThreads / 32; ++i) amax = nan_max(amax, scratch[i]);
  const float scale = amax / 127.0f;
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  int8_t* qrow = q + int64_t(blockIdx.x) * K;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    const int v = __float2int_rn(load_f32(row + k) * inv);  // |v| <= 127 by construction
    qrow[k] = int8_t(v > 127 ? 127 : (v < -127 ? -127 : v));
  }
  if (threadIdx.x == 0) scales[blockIdx.x] = scale;
}

template <typename T>
__global__ void dequantize_acc_kernel(const int32_t* __restrict__ acc, const float* __restrict__ x_scales,
                                      const float* __restrict__ w_scales, const float* __restrict__ bias, int64_t M,
                                      int64_t N, T* __restrict__ y) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N; i += stride) {
    const int64_t m = i / N, n = i - m * N;
    y[i] = from_f32<T>(float(acc[i]) * x_scales[m] * w_scales[n] + (bias ? bias[n] : 0.0f));
  }
}

}  // namespace

void launch_w8a8(const QuantRows& w, const void* x, DType dtype, int64_t M, const float* bias, void* y,
                 cudaStream_t stream) {
  const int64_t N = w.rows, K = w.K;
  StreamBuffer xq(size_t(M * K), stream), xs(size_t(M) * sizeof(float), stream),
      acc(size_t(M * N) * sizeof(int32_t), stream);
  with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    quantize_rows_kernel<T>
        <<<unsigned(M), kThreads, 0, stream>>>(static_cast<const T*>(x), K, xq.as<int8_t>(), xs.as<float>());
    check_launch("w8a8 activation quantization launch");
    gemm(M, N, K, {xq.get(), GemmType::kI8, K, false}, {w.data, GemmType::kI8, K, true}, acc.get(), GemmType::kI32, N,
         1.0f, 0.0f, stream);
    dequantize_acc_kernel<T><<<elementwise_blocks(M * N), kElementwiseThreads, 0, stream>>>(
        acc.as<int32_t>(), xs.as<float>(), w.scales, bias, M, N, static_cast<T*>(y));
    check_launch("w8a8 output scaling launch");
  });
}

}  // namespace slmops::cuda
