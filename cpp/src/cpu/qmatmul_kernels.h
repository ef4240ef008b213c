// The qmatmul tile kernels every ISA provides, and the layout facts they share.
#pragma once

#include <cstdint>

#include "slmops/qmatmul.h"

namespace slmops::cpu {

// One call computes y[m, n] for all m in [0, M) and n in [n0, n1), fp32, without bias.
struct TileArgs {
  const PackedWeight* w;
  int64_t M;
  const float* x;    // [M, K] fp32 activations (for kInt8: the dequantized int8 activations)
  const int8_t* xq;  // [M, Kp] int8 activation codes, zero beyond K (kInt8 only)
  const float* xs;   // [M, Kp / kActBlock] their block scales (kInt8 only)
  int64_t Kp;        // padded K: a multiple of 256 covering every code of a weight row
  float* y;          // [M, N]
};
using TileFn = void (*)(const TileArgs& a, int64_t n0, int64_t n1);

struct QMatmulKernels {
  TileFn float_act;                               // every PackedKind
  TileFn int8_act;                                // every PackedKind; kinds without integer kernels use float_act on x
  float (*sum_f32)(const float* src, int64_t n);  // the read-bandwidth probe's inner loop
};

namespace ref { const QMatmulKernels& qmatmul_kernels(); }
#ifdef SLMOPS_HAVE_AVX2
namespace avx2 { const QMatmulKernels& qmatmul_kernels(); }
#endif
#ifdef SLMOPS_HAVE_AVX512
namespace avx512 { const QMatmulKernels& qmatmul_kernels(); }
#endif

// Element (within the row) held by half h (0 = low nibble) of code byte j.
static inline int64_t nibble_element(NibbleOrder order, int64_t j, int h) {
  switch (order) {
    case NibbleOrder::kLowFirst: return 2 * j + h;
    case NibbleOrder::kHighFirst: return 2 * j + 1 - h;
    case NibbleOrder::kSplit32: return 32 * (j / 16) + j % 16 + 16 * h;
    case NibbleOrder::kSplit64: return 64 * (j / 32) + j % 32 + 32 * h;
  }
  return 0;
}

}  // namespace slmops::cpu

#include <vector>

#include "cpu/row_kernels.h"

namespace slmops::cpu {

// Row n of the weight's original quantized storage, for the dequantizing kernels.
static inline RowSrc source_row(const PackedWeight& w, const QuantLayout& L, int64_t n) {
  return RowSrc{w.source.data + n * L.data_bytes_per_row,
                L.tensor_scale ? w.source.scales : w.source.scales + n * L.scales_per_row,
                w.source.zero_points + n * L.zero_point_bytes_per_row};
}

}  // namespace slmops::cpu
