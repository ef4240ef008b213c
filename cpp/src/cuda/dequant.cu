// CUDA dequantization: one grid-stride kernel per call, one thread per output element,
// computing each element with the same float operations, in the same order, as the ref
// row kernels (cpu/ref/quant_ref.cpp), so the results match the CPU bit for bit.
//
// Bit-exactness: every product and difference goes through __fmul_rn / __fsub_rn.
// nvcc never contracts these intrinsics into an FMA (even with the default --fmad=true),
// so "dl * q - ml" of q4_k rounds twice exactly as the CPU ref does. Doing it in the
// source keeps the guarantee independent of the build flags of this file.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/quant_common.h"
#include "slmops/cuda.h"
#include "slmops/quant.h"

#ifndef SLMOPS_CUDA_ARCHITECTURES
#define SLMOPS_CUDA_ARCHITECTURES ""
#endif

namespace slmops::cuda {
namespace {

// Device copy of the NF4 codebook, initialized from the same host constants.
__constant__ float kNF4Dev[16] = {
    cpu::kNF4[0], cpu::kNF4[1], cpu::kNF4[2],  cpu::kNF4[3],  cpu::kNF4[4],  cpu::kNF4[5],  cpu::kNF4[6],  cpu::kNF4[7],
    cpu::kNF4[8], cpu::kNF4[9], cpu::kNF4[10], cpu::kNF4[11], cpu::kNF4[12], cpu::kNF4[13], cpu::kNF4[14], cpu::kNF4[15]};

struct Args {
  const uint8_t* data;
  const float* scales;
  const uint8_t* zero_points;
  int64_t rows, K;
  int64_t group_size;  // effective group/block size, K for whole-row int8
  int64_t data_bytes_per_row, scales_per_row, zero_point_bytes_per_row;
  bool symmetric;
};

// GGUF blocks are byte-packed (18, 34, 66, 210 bytes), so their fp16 scales are not
// 2-byte aligned: assemble the little-endian bits instead of dereferencing a __half*.
__device__ __forceinline__ float load_f16(const uint8_t* p) {
  const unsigned short h = static_cast<unsigned short>(p[0] | (p[1] << 8));
  return __half2float(__ushort_as_half(h));  // exact: every fp16 is an fp32
}

__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float itof(int v) { return __int2float_rn(v); }  // exact for codes

template <QuantFormat F>
__device__ __forceinline__ float dequant_element(const Args& a, int64_t r, int64_t i) {
  const uint8_t* row = a.data + r * a.data_bytes_per_row;
  const float* sc = a.scales + r * a.scales_per_row;
  if constexpr (F == QuantFormat::kInt8) {
    return mul(itof(static_cast<int8_t>(row[i])), sc[i / a.group_size]);
  } else if constexpr (F == QuantFormat::kInt4) {
    const int64_t G = a.group_size, gi = i / G, j = i % G;
    const int code = (row[gi * (G / 2) + j / 2] >> ((j & 1) * 4)) & 0xF;
    const int zp = a.symmetric ? 8 : (a.zero_points[r * a.zero_point_bytes_per_row + gi / 2] >> ((gi & 1) * 4)) & 0xF;
    return mul(itof(code - zp), sc[gi]);
  } else if constexpr (F == QuantFormat::kNF4) {
    const int code = (row[i / 2] >> ((i & 1) ? 0 : 4)) & 0xF;
    return mul(kNF4Dev[code], sc[i / a.group_size]);
  } else if constexpr (F == QuantFormat::kTernary) {
    const int code = (row[i / 4] >> ((i % 4) * 2)) & 3;
    return mul(itof(code - 1), a.scales[0]);  // one scale for the whole tensor
  } else if constexpr (F == QuantFormat::kQ4_0) {
    const uint8_t* blk = row + (i / cpu::kQK4_0) * cpu::kQ4_0Bytes;
    const int j = static_cast<int>(i % cpu::kQK4_0);
    const int q = j < 16 ? (blk[2 + j] & 0xF) : (blk[2 + j - 16] >> 4);
    return mul(load_f16(blk), itof(q - 8));
  } else if constexpr (F == QuantFormat::kQ8_0) {
    const uint8_t* blk = row + (i / cpu::kQK8_0) * cpu::kQ8_0Bytes;
    const int j = static_cast<int>(i % cpu::kQK8_0);
    return mul(itof(static_cast<int8_t>(blk[2 + j])), load_f16(blk));
  } else if constexpr (F == QuantFormat::kQ4_K) {
    const uint8_t* blk = row + (i / cpu::kQK_K) * cpu::kQ4_KBytes;
    const int e = static_cast<int>(i % cpu::kQK_K), j = e / 32, l = e % 32;
    const uint8_t* q = blk + 4;  // 6-bit scales and mins, ggml get_scale_min_k4
    int s, m;
    if (j < 4) {
      s = q[j] & 63;
      m = q[j + 4] & 63;
    } else {
      s = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
      m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
    const float dl = mul(load_f16(blk), itof(s));
    const float ml = mul(load_f16(blk + 2), itof(m));
    const int code = (blk[16 + 32 * (j / 2) + l] >> ((j & 1) * 4)) & 0xF;
    return __fsub_rn(mul(dl, itof(code)), ml);
  } else if constexpr (F == QuantFormat::kQ6_K) {
    const uint8_t* blk = row + (i / cpu::kQK_K) * cpu::kQ6_KBytes;
    const int e = static_cast<int>(i % cpu::kQK_K), h = e / 128, l = e % 128;
    const int lo = (blk[64 * h + l % 64] >> ((l / 64) * 4)) & 0xF;
    const int hi = (blk[128 + 32 * h + l % 32] >> ((l / 32) * 2)) & 3;
    const float dsc = mul(load_f16(blk + 208), itof(static_cast<int8_t>(blk[192 + e / 16])));
    return mul(dsc, itof((lo | (hi << 4)) - 32));
  } else {  // kTQ2_0
    const uint8_t* blk = row + (i / cpu::kQK_K) * cpu::kTQ2_0Bytes;
    const int e = static_cast<int>(i % cpu::kQK_K), c = e / 128, n = (e % 128) / 32, m = e % 32;
    return mul(load_f16(blk + 64), itof(((blk[32 * c + m] >> (2 * n)) & 3) - 1));
  }
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <QuantFormat F, typename Out>
__global__ void dequantize_kernel(Args a, Out* __restrict__ dst) {
  const int64_t n = a.rows * a.K;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const int64_t r = idx / a.K;
    store(dst + idx, dequant_element<F>(a, r, idx - r * a.K));
  }
}

template <QuantFormat F, typename Out>
void launch(const Args& a, void* dst, cudaStream_t stream) {
  constexpr int kThreads = 256;
  // Grid-stride loop: cap the grid, every thread covers idx, idx + stride, ...
  const int64_t blocks = std::min<int64_t>((a.rows * a.K + kThreads - 1) / kThreads, 65535);
  dequantize_kernel<F, Out><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, static_cast<Out*>(dst));
}

template <QuantFormat F>
void launch_for_dtype(const Args& a, void* dst, DType dtype, cudaStream_t stream) {
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

  Args a{};
  a.data = src.data;
  a.scales = src.scales;
  a.zero_points = src.zero_points;
  a.rows = rows;
  a.K = K;
  a.group_size = L.group_size ? L.group_size : K;  // int8 with one scale per row
  a.data_bytes_per_row = L.data_bytes_per_row;
  a.scales_per_row = L.scales_per_row;
  a.zero_point_bytes_per_row = L.zero_point_bytes_per_row;
  a.symmetric = spec.symmetric;

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
