// Sparse weight matmul: y[M, N] = x[M, K] @ W^T (+ bias) with W [N, K] stored sparse.
//
// Two formats, both borrowed from the caller's buffers (kept alive while used):
//   N:M semi-structured (2:4, 4:8): n of every m consecutive weights of a row are kept.
//     A row stores its K*n/m kept values in order, and for each one its index within its
//     group of m as a little-endian bit stream of log2(m) bits per value (2 bits for 2:4,
//     3 for 4:8; value j at bits [j*b, j*b + b) of the row's bytes). Values are fp32,
//     bf16, or int8/int4 codes with the scales of the quantization formats (groups run
//     along the kept values), so sparsity and quantization combine.
//   CSR: row pointers, sorted column indices (int16 where K fits, else int32), fp32 values.
#pragma once

#include <cstdint>
#include <vector>

#include "slmops/cpu_features.h"

namespace slmops {

enum class SparseValueType : int { kF32 = 0, kBF16 = 1, kInt8 = 2, kInt4 = 3 };

// The n:m patterns the layout and the kernels support (nm_layout refuses any other).
struct NMPattern {
  int n, m;
};
inline constexpr NMPattern kNMPatterns[] = {{2, 4}, {4, 8}};

struct NMSparseWeight {
  int64_t N = 0, K = 0;
  int n = 2, m = 4;  // n of every m kept
  SparseValueType type = SparseValueType::kF32;
  // kF32: float [N, kept]; kBF16: uint16 [N, kept]; kInt8: int8 codes [N, kept], w = s*q;
  // kInt4: codes [N, groups * group / 2] (rows padded to whole groups, as MatMulNBits
  // pads them), value 2i in the low nibble of byte i, w = s*q + o.
  const void* values = nullptr;
  const float* scales = nullptr;     // int8/int4: [N, groups]
  std::vector<float> offsets;        // int4 with zero points: [N, groups], o = -zero_point * s;
                                     // empty when symmetric (zero point 8: w = s * (q - 8))
  int64_t group = 0;                 // int8/int4: kept values per scale
  const uint8_t* indices = nullptr;  // [N, index_row_bytes()]

  int64_t kept() const { return K / m * n; }  // kept values per row
  int index_bits() const { return m == 4 ? 2 : 3; }
  int64_t index_row_bytes() const { return (kept() * index_bits() + 7) / 8; }
  int64_t groups() const { return group ? (kept() - 1) / group + 1 : 0; }  // kept >= 1
  int64_t int4_row_bytes() const { return groups() * group / 2; }
};

// The shape of an n:m weight without its buffers: validates n:m in {2:4, 4:8}, K a
// multiple of m, the quantization group (int8/int4: 0 for the whole row, else a positive
// multiple of 16 kept values) and that every buffer's size, N times its row, fits in
// int64. Callers size the buffers from the result. Throws std::invalid_argument.
NMSparseWeight nm_layout(int64_t N, int64_t K, int n, int m, SparseValueType type, int64_t group);

// nm_layout plus the buffers (values and indices required, scales for int8/int4), and the
// int4 offsets computed from the zero points (nibble g%2 of byte g/2 per row; nullptr:
// symmetric, zero point 8, and no offsets: the kernels then read a quarter fewer bytes of
// scales per weight). Throws std::invalid_argument with the reason.
NMSparseWeight make_nm_weight(int64_t N, int64_t K, int n, int m, SparseValueType type, const void* values,
                              const float* scales, const uint8_t* zero_points, int64_t group, const uint8_t* indices);

struct CsrWeight {
  int64_t N = 0, K = 0;
  const int64_t* row_ptr = nullptr;  // [N + 1], row_ptr[0] = 0, non-decreasing
  const void* cols = nullptr;        // [nnz] int16 (cols16) or int32, sorted within a row
  bool cols16 = false;
  const float* values = nullptr;  // [nnz]
  int64_t nnz() const { return row_ptr[N]; }
};

// Checks the row pointers (row_ptr[0] = 0, non-decreasing: every row inside [0, nnz)) before
// it reads any column index, then the columns (in range, strictly increasing within a row);
// throws std::invalid_argument naming the first bad row.
void validate_csr(const CsrWeight& w);

// y [M, N] fp32 = x [M, K] fp32 @ W^T + bias (N floats or nullptr). Few activation rows run
// along each weight row (decode once, gather the activations each kept value meets); from
// kSpmmGemmRows rows the activations are transposed and every kept value is broadcast
// against a vector of activation rows.
//
// act = kInt8 (int8 or int4 values only): each activation row is first quantized to int8 in
// blocks of 32 (kActBlock of qmatmul: symmetric, absmax / 127, half to even) and y = W x^
// with x^ the dequantized row, as qmatmul's int8 mode. For 2:4 int4 values with groups of 16,
// 32 or a multiple of 64 kept values, and fewer than kSpmmInt8GemmRows rows, AVX-512 runs this
// on integer dot products (VNNI, activations gathered by byte shuffles); everything else
// runs the float kernels on x^, so every ISA computes the same product.
// As qmatmul, a row of x holding NaN or Inf gives an all-NaN row of y on every path (a
// sparse product alone would spread it only to the outputs whose weights touch its column).
enum class SpmmActivation : int { kFloat = 0, kInt8 = 1 };
constexpr int64_t kSpmmGemmRows = 8;
// The integer kernel decodes a weight row once per 4 activation rows; the transposed float
// path's FMAs overtake it between 32 and 128 rows (1536 x 576: 393 against 509 us at 32,
// 1403 against 1090 at 128).
constexpr int64_t kSpmmInt8GemmRows = 64;
void spmm_nm(const NMSparseWeight& w, const float* x, int64_t M, const float* bias, float* y,
             CpuIsa isa = CpuIsa::kAuto, SpmmActivation act = SpmmActivation::kFloat);
void spmm_csr(const CsrWeight& w, const float* x, int64_t M, const float* bias, float* y, CpuIsa isa = CpuIsa::kAuto);

}  // namespace slmops
