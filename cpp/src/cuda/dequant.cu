// CUDA dequantization: one grid-stride kernel per call, one thread per output element,
// each element computed by dequant_element (bit for bit the CPU ref's arithmetic).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/dequant_element.h"
#include "slmops/cuda.h"
#include "slmops/quant.h"

#ifndef SLMOPS_CUDA_ARCHITECTURES
#define SLMOPS_CUDA_ARCHITECTURES ""
#endif

namespace slmops::cuda {
namespace {

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <QuantFormat F, typename Out>
__global__ void dequantize_kernel(QuantRows a, Out* __restrict__ dst) {
  const int64_t n = a.rows * a.K;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const int64_t r = idx / a.K;
    store(dst + idx, dequant_element<F>(a, r, idx - r * a.K));
  }
}

template <QuantFormat F, typename Out>
void launch(const QuantRows& a, void* dst, cudaStream_t stream) {
  constexpr int kThreads = 256;
  // Grid-stride loop: cap the grid, every thread covers idx, idx + stride, ...
  const int64_t blocks = std::min<int64_t>((a.rows * a.K + kThreads - 1) / kThreads, 65535);
  dequantize_kernel<F, Out><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, static_cast<Out*>(dst));
}

template <QuantFormat F>
void launch_for_dtype(const QuantRows& a, void* dst, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kF32: return launch<F, float>(a, dst, stream);
    case DType::kF16: return launch<F, __half>(a, dst, stream);
    case DType::kBF16: return launch<F, __nv_bfloat16>(a, dst, stream);
  }
  throw std::invalid_argument("cuda::dequantize: unknown output dtype");
}

}  // namespace

bool compiled() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no GPU: clear the error so later calls start clean
    return 0;
  }
  return n;
}

std::string architectures() { return SLMOPS_CUDA_ARCHITECTURES; }

void dequantize(const QuantSpec& spec, ConstQuantStorage src, int64_t rows, int64_t K, void* dst, DType dst_dtype,
                void* stream) {
  const QuantLayout L = quant_layout(spec, K);
  if (rows < 0) throw std::invalid_argument("rows must be >= 0, got " + std::to_string(rows));
  if (dst_dtype != DType::kF32 && dst_dtype != DType::kF16 && dst_dtype != DType::kBF16)
    throw std::invalid_argument("cuda::dequantize: unknown output dtype");
  if (rows == 0) return;
  if (!src.data || !dst || ((L.scales_per_row || L.tensor_scale) && !src.scales) ||
      (L.zero_point_bytes_per_row && !src.zero_points))
    throw std::invalid_argument("cuda::dequantize: a buffer required by the format is null");

  const QuantRows a = quant_rows(spec, L, src, rows, K);

  const auto s = static_cast<cudaStream_t>(stream);
  switch (spec.format) {
    case QuantFormat::kInt8: launch_for_dtype<QuantFormat::kInt8>(a, dst, dst_dtype, s); break;
    case QuantFormat::kInt4: launch_for_dtype<QuantFormat::kInt4>(a, dst, dst_dtype, s); break;
    case QuantFormat::kNF4: launch_for_dtype<QuantFormat::kNF4>(a, dst, dst_dtype, s); break;
    case QuantFormat::kTernary: launch_for_dtype<QuantFormat::kTernary>(a, dst, dst_dtype, s); break;
    case QuantFormat::kQ4_0: launch_for_dtype<QuantFormat::kQ4_0>(a, dst, dst_dtype, s); break;
    case QuantFormat::kQ8_0: launch_for_dtype<QuantFormat::kQ8_0>(a, dst, dst_dtype, s); break;
    case QuantFormat::kQ4_K: launch_for_dtype<QuantFormat::kQ4_K>(a, dst, dst_dtype, s); break;
    case QuantFormat::kQ6_K: launch_for_dtype<QuantFormat::kQ6_K>(a, dst, dst_dtype, s); break;
    case QuantFormat::kTQ2_0: launch_for_dtype<QuantFormat::kTQ2_0>(a, dst, dst_dtype, s); break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("cuda::dequantize: kernel launch failed: ") + cudaGetErrorString(err));
}

}  // namespace slmops::cuda
