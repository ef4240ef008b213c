// Quantized GEMV for decode (M = 1 to 8): one warp per weight row, each lane reading
// 16-byte chunks of the row (a warp reads 512 contiguous bytes: one coalesced request),
// decoding the codes in registers and multiplying them with the activations, which all
// warps of the GPU share through L1/L2. The lane work is in qgemv.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/device.cuh"
#include "cuda/qgemv.h"
#include "cuda/qmatmul_kernels.h"

namespace slmops::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T>
struct XRows {
  const T* x;
  int64_t K;
  __device__ __forceinline__ float operator()(int m, int64_t k) const { return k < K ? load_f32(x + m * K + k) : 0.0f; }
};

template <FusedFormat FF, QuantFormat F, typename T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    qgemv_kernel(QuantRows w, const T* __restrict__ x, int M, const float* __restrict__ bias, T* __restrict__ y,
                 bool vector_path) {
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= w.rows) return;  // whole warps leave together: the shuffles below stay full
  float acc[kGemvMaxRows] = {};
  const XRows<T> xr{x, w.K};
  if (vector_path)
    gemv_lane_vector<FF>(w, n, M, xr, lane, 32, acc);
  else
    gemv_lane_scalar<F>(w, n, M, xr, lane, 32, acc);
#pragma unroll
  for (int m = 0; m < kGemvMaxRows; ++m) {
    if (m >= M) break;
    const float v = warp_sum(acc[m]);
    if (lane == 0) y[m * w.rows + n] = from_f32<T>(v + (bias ? bias[n] : 0.0f));
  }
}

template <FusedFormat FF, QuantFormat F>
void launch(const QuantRows& w, const void* x, DType dtype, int64_t M, const float* bias, void* y,
            cudaStream_t stream) {
  const bool vec = gemv_vector_path(FF, w);
  const unsigned blocks = unsigned((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    qgemv_kernel<FF, F, T><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(w, static_cast<const T*>(x), int(M), bias,
                                                                       static_cast<T*>(y), vec);
  });
  check_launch("qgemv kernel launch");
}

}  // namespace

void launch_qgemv(QuantFormat f, const QuantRows& w, const void* x, DType dtype, int64_t M, const float* bias, void* y,
                  cudaStream_t stream) {
  switch (f) {
    case QuantFormat::kInt4: return launch<FusedFormat::kInt4, QuantFormat::kInt4>(w, x, dtype, M, bias, y, stream);
    case QuantFormat::kNF4: return launch<FusedFormat::kNF4, QuantFormat::kNF4>(w, x, dtype, M, bias, y, stream);
    case QuantFormat::kInt8: return launch<FusedFormat::kInt8, QuantFormat::kInt8>(w, x, dtype, M, bias, y, stream);
    default: throw std::invalid_argument("qgemv: int4, nf4 and int8 only");
  }
}

}  // namespace slmops::cuda
