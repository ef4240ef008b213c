// The sparse matmul kernels every ISA provides, and the scalar decoding they share (the
// ref kernels use it for everything, the SIMD kernels for row tails).
#pragma once

#include <cstdint>

#include "common/half.h"
#include "slmops/spmm.h"

namespace slmops::cpu {

// Activation rows quantized for the integer kernel, in its gather layout: per row, windows
// of 128 columns as 128 bytes (lane L of the first 64 holds columns 32L..32L+15 of the
// window, lane L of the second 64 columns 32L+16..32L+31: each byte shuffle then reaches
// the columns of the 8 kept values in its half lane), 16 lane scales per window (lane l of
// a 64-kept step covers columns 8l..8l+7, in activation block l / 4), and x^ for row tails.
struct SpmmInt8Rows {
  const int8_t* windows;     // [M, windows_per_row, 128]
  const float* lane_scales;  // [M, windows_per_row, 16]
  const float* xhat;         // [M, K] the dequantized activations (unused by the integer kernel)
  int64_t windows_per_row;
};

// Whether the integer kernel takes w: 2:4 int4 whose quantization groups divide 64 kept
// values or are multiples of 64 (a 64-value step then meets whole lanes of each group).
inline bool spmm_int8_kernel_takes(const NMSparseWeight& w) {
  return w.type == SparseValueType::kInt4 && w.n == 2 && w.m == 4 && (w.group % 64 == 0 || 64 % w.group == 0);
}

using NmRowsInt8Fn = void (*)(const NMSparseWeight& w, const SpmmInt8Rows& x, int64_t M, float* y, int64_t n0,
                              int64_t n1);

struct SpmmKernels {
  // y[m * N + n] = (row n of W) . x[m] for m < M, n in [n0, n1): few activation rows.
  void (*nm_rows)(const NMSparseWeight& w, const float* x, int64_t M, float* y, int64_t n0, int64_t n1);
  void (*csr_rows)(const CsrWeight& w, const float* x, int64_t M, float* y, int64_t n0, int64_t n1);
  // The kept weights of rows [n0, n1) in columns [k0, k1) (k0 a multiple of 32 * m / n = 64,
  // k1 of m) as fp32 values and their columns, in order: row n's (k1 - k0) * n / m of them
  // at vals/cols + (n - n0) * stride.
  void (*nm_decode)(const NMSparseWeight& w, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* vals, int32_t* cols,
                    int64_t stride);
  // acc[0, width) += sum_j vals[j] * xT[cols[j] * ld + (0, width)]; width a multiple of 16.
  // The inner loop of the many-rows path: x transposed, each kept weight broadcast.
  void (*accumulate)(const float* vals, const int32_t* cols, int64_t count, const float* xT, int64_t ld, int64_t width,
                     float* acc);
  // nm_rows with int8 activations (spmm_int8_kernel_takes(w)); nullptr where the ISA has none.
  NmRowsInt8Fn nm_rows_int8;
};

const SpmmKernels& spmm_kernels_for(CpuIsa isa);

namespace ref { const SpmmKernels& spmm_kernels(); }
#ifdef SLMOPS_HAVE_AVX2
namespace avx2 { const SpmmKernels& spmm_kernels(); }
#endif
#ifdef SLMOPS_HAVE_AVX512
namespace avx512 { const SpmmKernels& spmm_kernels(); }
#endif

// A row's extent in each buffer of an n:m weight, found once per call: the kernels step
// from row to row thousands of times a call, and each size is a division.
struct NMRowStrides {
  int64_t kept, groups, index_bytes, value_bytes;  // value_bytes: bytes of values a row
  explicit NMRowStrides(const NMSparseWeight& w)
      : kept(w.kept()), groups(w.groups()), index_bytes(w.index_row_bytes()),
        value_bytes(w.type == SparseValueType::kF32    ? 4 * kept
                    : w.type == SparseValueType::kBF16 ? 2 * kept
                    : w.type == SparseValueType::kInt8 ? kept
                                                       : w.int4_row_bytes()) {}
};

// Kept value j of row n, as a float.
static inline float nm_value(const NMSparseWeight& w, int64_t n, int64_t j) {
  const int64_t i = n * w.kept() + j;
  switch (w.type) {
    case SparseValueType::kF32: return static_cast<const float*>(w.values)[i];
    case SparseValueType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(w.values)[i]);
    case SparseValueType::kInt8:
      return w.scales[n * w.groups() + j / w.group] * float(static_cast<const int8_t*>(w.values)[i]);
    case SparseValueType::kInt4: {
      const uint8_t byte = static_cast<const uint8_t*>(w.values)[n * w.int4_row_bytes() + j / 2];
      const int64_t g = n * w.groups() + j / w.group;
      const int q = (j & 1) ? byte >> 4 : byte & 0xF;
      return w.offsets.empty() ? w.scales[g] * float(q - 8) : w.scales[g] * float(q) + w.offsets[size_t(g)];
    }
  }
  return 0.0f;
}

// Column of kept value j of row n: its group's first column plus its in-group index.
static inline int64_t nm_column(const NMSparseWeight& w, int64_t n, int64_t j) {
  const int b = w.index_bits();
  const int64_t bytes = w.index_row_bytes(), bit = j * b, at = bit / 8;
  const uint8_t* row = w.indices + n * bytes;
  const uint32_t pair = row[at] | (at + 1 < bytes ? uint32_t(row[at + 1]) << 8 : 0u);
  return w.m * (j / w.n) + ((pair >> (bit % 8)) & ((1u << b) - 1));
}

static inline int64_t csr_column(const CsrWeight& w, int64_t i) {
  return w.cols16 ? static_cast<const int16_t*>(w.cols)[i] : static_cast<const int32_t*>(w.cols)[i];
}

}  // namespace slmops::cpu
