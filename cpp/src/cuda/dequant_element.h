// One weight element of any quantization format, as the CUDA kernels compute it: the same
// float operations in the same order as the CPU ref row kernels (cpu/ref/quant_ref.cpp),
// so dequantization on the GPU matches the CPU bit for bit. Host and device (hd.h).
#pragma once

#include <cstdint>

#include "common/half.h"
#include "cpu/quant_common.h"
#include "cuda/hd.h"
#include "slmops/quant.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace slmops::cuda {

#if defined(__CUDACC__)
// Device copy of the NF4 codebook, from the same host constants (one per translation unit).
static __constant__ float kNF4Dev[16] = {cpu::kNF4[0],  cpu::kNF4[1],  cpu::kNF4[2],  cpu::kNF4[3],
                                         cpu::kNF4[4],  cpu::kNF4[5],  cpu::kNF4[6],  cpu::kNF4[7],
                                         cpu::kNF4[8],  cpu::kNF4[9],  cpu::kNF4[10], cpu::kNF4[11],
                                         cpu::kNF4[12], cpu::kNF4[13], cpu::kNF4[14], cpu::kNF4[15]};
#endif

SLMOPS_HD float nf4_value(int code) {
#if defined(__CUDA_ARCH__)
  return kNF4Dev[code];
#else
  return cpu::kNF4[code];
#endif
}

// A quantized [rows, K] weight in its quant_layout storage.
struct QuantRows {
  const uint8_t* data;
  const float* scales;
  const uint8_t* zero_points;
  int64_t rows, K;
  int64_t group_size;  // effective group/block size, K for whole-row int8
  int64_t data_bytes_per_row, scales_per_row, zero_point_bytes_per_row;
  bool symmetric;
};

inline QuantRows quant_rows(const QuantSpec& spec, const QuantLayout& L, ConstQuantStorage s, int64_t rows, int64_t K) {
  return QuantRows{s.data,
                   s.scales,
                   s.zero_points,
                   rows,
                   K,
                   L.group_size ? L.group_size : K,  // int8 with one scale per row
                   L.data_bytes_per_row,
                   L.scales_per_row,
                   L.zero_point_bytes_per_row,
                   spec.symmetric};
}

// GGUF blocks are byte-packed (18, 34, 66, 210 bytes), so their fp16 scales are not
// 2-byte aligned: assemble the little-endian bits instead of dereferencing a half.
SLMOPS_HD float load_f16(const uint8_t* p) {
  const unsigned short h = static_cast<unsigned short>(p[0] | (p[1] << 8));
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));  // exact: every fp16 is an fp32
#else
  return f16_to_f32(h);
#endif
}

SLMOPS_HD float itof(int v) { return static_cast<float>(v); }  // exact for codes

// The int4 zero point of group g of row r (8 when symmetric).
SLMOPS_HD int int4_zero_point(const QuantRows& a, int64_t r, int64_t g) {
  return a.symmetric ? 8 : (a.zero_points[r * a.zero_point_bytes_per_row + g / 2] >> ((g & 1) * 4)) & 0xF;
}

template <QuantFormat F>
SLMOPS_HD float dequant_element(const QuantRows& a, int64_t r, int64_t i) {
  using hd::mul;
  const uint8_t* row = a.data + r * a.data_bytes_per_row;
  const float* sc = a.scales + r * a.scales_per_row;
  if constexpr (F == QuantFormat::kInt8) {
    return mul(itof(static_cast<int8_t>(row[i])), sc[i / a.group_size]);
  } else if constexpr (F == QuantFormat::kInt4) {
    const int64_t G = a.group_size, gi = i / G, j = i % G;
    const int code = (row[gi * (G / 2) + j / 2] >> ((j & 1) * 4)) & 0xF;
    return mul(itof(code - int4_zero_point(a, r, gi)), sc[gi]);
  } else if constexpr (F == QuantFormat::kNF4) {
    const int code = (row[i / 2] >> ((i & 1) ? 0 : 4)) & 0xF;
    return mul(nf4_value(code), sc[i / a.group_size]);
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
    return hd::sub(mul(dl, itof(code)), ml);
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

}  // namespace slmops::cuda
