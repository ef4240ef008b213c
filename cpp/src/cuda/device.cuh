// Device-side helpers shared by the kernels (nvcc only): element loads and stores in the
// three activation dtypes, warp and block sums, and the launch error check.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "slmops/dtype.h"

namespace slmops::cuda {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
__device__ __forceinline__ float load_f32(const T* p) {
  return to_f32(__ldg(p));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `scratch` holds 32 values; the call ends with a barrier, so scratch can be reused.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = lane < warps ? scratch[lane] : T(0);
  total = warp_sum(total);
  __syncthreads();
  return total;
}

// Calls f with a null pointer of the CUDA type of `dtype` (float, __half, __nv_bfloat16).
template <typename F>
void with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32: return f(static_cast<float*>(nullptr));
    case DType::kF16: return f(static_cast<__half*>(nullptr));
    case DType::kBF16: return f(static_cast<__nv_bfloat16*>(nullptr));
  }
  throw std::invalid_argument("unknown dtype");
}

// Grid of the grid-stride elementwise kernels over n elements: capped, since each thread
// loops over idx, idx + stride, ...
constexpr int kElementwiseThreads = 256;
inline unsigned elementwise_blocks(int64_t n) {
  const int64_t blocks = (n + kElementwiseThreads - 1) / kElementwiseThreads;
  return unsigned(blocks < 4096 ? blocks : 4096);
}

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

}  // namespace slmops::cuda
