// The per-lane work of the quantized GEMV (qgemv.cu), host and device (hd.h): lane
// `lane` of `lanes` accumulates its share of one weight row's dot products with M <=
// kGemvMaxRows activation rows. The kernel runs it in each lane of a warp and sums the
// lanes; the host tests run every lane in turn on the CPU.
#pragma once

#include <cstdint>

#include "cuda/dequant_element.h"
#include "cuda/hd.h"
#include "slmops/cuda.h"

namespace slmops::cuda {

constexpr int kGemvMaxRows = int(kCudaGemvMaxRows);  // decode batches: M = 1 to 8

// The formats with a fused GPU kernel.
enum class FusedFormat : int { kInt4, kNF4, kInt8 };

// The vector path reads rows as 16-byte chunks (one coalesced load per lane) and needs
// each 8-byte half of a chunk inside one scale group: 4-bit groups are powers of two >= 16
// (16 codes per half), int8 groups a multiple of 8 or the whole row.
inline bool gemv_vector_path(FusedFormat f, const QuantRows& w) {
  const bool aligned = (reinterpret_cast<uintptr_t>(w.data) % 16 == 0) && (w.data_bytes_per_row % 16 == 0);
  return aligned && (f != FusedFormat::kInt8 || w.group_size % 8 == 0);
}

// x(m, k): activation row m at column k, 0 past K.
template <FusedFormat F, class X>
SLMOPS_HD void gemv_lane_vector(const QuantRows& w, int64_t n, int M, const X& x, int lane, int lanes,
                                float (&acc)[kGemvMaxRows]) {
  constexpr int kPerHalf = F == FusedFormat::kInt8 ? 8 : 16;  // elements in 8 bytes
  const uint8_t* row = w.data + n * w.data_bytes_per_row;
  const float* sc = w.scales + n * w.scales_per_row;
  const int64_t chunks = w.data_bytes_per_row / 16;
  for (int64_t c = lane; c < chunks; c += lanes) {
    const hd::Bytes16 b = hd::load16(row + 16 * c);
    SLMOPS_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int64_t k0 = (2 * c + h) * kPerHalf;
      if (k0 >= w.K) break;  // int4 rows end in a zero-padded group
      const int64_t g = k0 / w.group_size;
      float v[kPerHalf];
      if constexpr (F == FusedFormat::kInt8) {
        SLMOPS_UNROLL
        for (int i = 0; i < kPerHalf; ++i) v[i] = float(hd::sbyte(b.w[2 * h + i / 4], i % 4));
      } else if constexpr (F == FusedFormat::kInt4) {
        const int zero = int4_zero_point(w, n, g);
        SLMOPS_UNROLL
        for (int i = 0; i < kPerHalf; ++i) v[i] = float(hd::nibble(b.w[2 * h + i / 8], i % 8, false) - zero);
      } else {
        SLMOPS_UNROLL
        for (int i = 0; i < kPerHalf; ++i) v[i] = nf4_value(hd::nibble(b.w[2 * h + i / 8], i % 8, true));
      }
      const float s = sc[g];
      SLMOPS_UNROLL
      for (int m = 0; m < kGemvMaxRows; ++m) {
        if (m >= M) break;
        float dot = 0.0f;
        SLMOPS_UNROLL
        for (int i = 0; i < kPerHalf; ++i) dot += v[i] * x(m, k0 + i);
        acc[m] += dot * s;  // the group's scale once per half
      }
    }
  }
}

// Any row layout: one element at a time through dequant_element.
template <QuantFormat F, class X>
SLMOPS_HD void gemv_lane_scalar(const QuantRows& w, int64_t n, int M, const X& x, int lane, int lanes,
                                float (&acc)[kGemvMaxRows]) {
  for (int64_t k = lane; k < w.K; k += lanes) {
    const float wk = dequant_element<F>(w, n, k);
    for (int m = 0; m < M; ++m) acc[m] += wk * x(m, k);
  }
}

}  // namespace slmops::cuda
