// The GPU quantized matmul: argument checks, the choice of kernel family, and the
// dequantize + cuBLASLt path for the formats and shapes without a fused kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/device.cuh"
#include "cuda/qmatmul_kernels.h"
#include "cuda/runtime.h"
#include "slmops/cuda.h"

namespace slmops::cuda {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument("cuda::qmatmul: " + msg); }

// y [M, N] = the bias broadcast over rows.
template <typename T>
__global__ void broadcast_bias_kernel(const float* __restrict__ bias, int64_t M, int64_t N, T* __restrict__ y) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N; i += stride)
    y[i] = from_f32<T>(bias[i % N]);
}

void dequantize_gemm(const QuantSpec& spec, ConstQuantStorage w, int64_t N, int64_t K, const void* x, DType dtype,
                     int64_t M, const float* bias, void* y, cudaStream_t stream) {
  StreamBuffer wd(size_t(N * K) * size_t(dtype_size(dtype)), stream);
  dequantize(spec, w, N, K, wd.get(), dtype, stream);
  float beta = 0.0f;
  if (bias) {  // y starts as the broadcast bias and the GEMM adds onto it
    with_dtype(dtype, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      broadcast_bias_kernel<T>
          <<<elementwise_blocks(M * N), kElementwiseThreads, 0, stream>>>(bias, M, N, static_cast<T*>(y));
    });
    check_launch("bias broadcast launch");
    beta = 1.0f;
  }
  gemm(M, N, K, {x, gemm_type(dtype), K, false}, {wd.get(), gemm_type(dtype), K, true}, y, gemm_type(dtype), N, 1.0f,
       beta, stream);
}

}  // namespace

void qmatmul(const QuantSpec& spec, ConstQuantStorage w, int64_t N, int64_t K, const void* x, DType dtype, int64_t M,
             const float* bias, void* y, QMatmulActivation act, CudaQMatmulPath path, void* stream_ptr) {
  const QuantLayout L = quant_layout(spec, K);
  if (N <= 0 || M < 0) fail("need N > 0 and M >= 0, got N = " + std::to_string(N) + ", M = " + std::to_string(M));
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) fail("unknown activation dtype");
  if (M == 0) return;
  if (!w.data || !x || !y || ((L.scales_per_row || L.tensor_scale) && !w.scales) ||
      (L.zero_point_bytes_per_row && !w.zero_points))
    fail("a buffer required by the format is null");
  const QuantRows rows = quant_rows(spec, L, w, N, K);
  const auto stream = static_cast<cudaStream_t>(stream_ptr);

  if (act == QMatmulActivation::kInt8)
    fail("activation 'int8' (int8 blocks of 32) is a CPU mode; on CUDA use 'float' or 'int8_row' (W8A8)");
  if (act == QMatmulActivation::kInt8Row) {
    if (spec.format != QuantFormat::kInt8 || L.groups_per_row != 1)
      fail("W8A8 (activation 'int8_row') needs int8 weights with one scale per row (group_size 0)");
    if (K % 4) fail("W8A8 needs in_features a multiple of 4 (cuBLASLt int8), got " + std::to_string(K));
    if (path != CudaQMatmulPath::kAuto) fail("W8A8 has one path; leave the path on auto");
    launch_w8a8(rows, x, dtype, M, bias, y, stream);
    return;
  }

  const DeviceInfo dev = current_device();
  if (path == CudaQMatmulPath::kAuto) path = choose_qmatmul_path(spec, dtype, M, dev.compute_capability);
  switch (path) {
    case CudaQMatmulPath::kGemv:
      if (M > kCudaGemvMaxRows) fail("the GEMV path takes at most 8 activation rows, got " + std::to_string(M));
      if (choose_qmatmul_path(spec, dtype, 1, dev.compute_capability) != CudaQMatmulPath::kGemv)
        fail("the GEMV path runs int4, nf4 and int8 weights");
      launch_qgemv(spec.format, rows, x, dtype, M, bias, y, stream);
      return;
    case CudaQMatmulPath::kTensorCore:
      if (!tensor_core_supported(spec, dtype, dev.compute_capability))
        fail(
            "the tensor-core path runs int4, nf4 and int8 weights with float16 activations (sm_70+) or bfloat16 "
            "(sm_80+); this GPU is sm_" +
            std::to_string(dev.compute_capability));
      launch_qgemm(spec.format, rows, x, dtype, M, bias, y, tensor_core_split_k(M, N, K, dev.sm_count), stream);
      return;
    case CudaQMatmulPath::kDequantizeGemm:
    case CudaQMatmulPath::kAuto: dequantize_gemm(spec, w, N, K, x, dtype, M, bias, y, stream); return;
  }
}

}  // namespace slmops::cuda
