// Quantized matmul: y[M, N] = x[M, K] @ W^T (+ bias), W [N, K] quantized.
//
// A weight is packed once (pack_weight) into the layout its kernels read, then multiplied
// any number of times. Packing borrows the quantized buffers where the kernels read them
// as they are (int4, int8, nf4, ternary) and copies what must be rearranged (the GGUF
// blocks: their fp16 scales are split out as fp32, exactly). The caller keeps borrowed
// buffers alive while the PackedWeight is used.
#pragma once

#include <cstdint>
#include <vector>

#include "slmops/cpu_features.h"
#include "slmops/dtype.h"
#include "slmops/quant.h"

namespace slmops {

// How activations meet the weights:
//   kFloat: weights are decoded in registers and multiplied with the float activations.
//   kInt8:  each activation row is quantized to int8 in blocks of kActBlock (symmetric,
//           scale absmax/127, half to even: the int8 format with group 32), and the
//           products are integer dot products (AVX-512 VNNI / AVX2 maddubs).
//   kInt8Row: as kInt8 with one scale per activation row (per token): W8A8 in the usual
//           sense. With per-channel int8 weights and oneDNN present this runs on oneDNN's
//           int8 matmul (see QMatmulBackend).
enum class QMatmulActivation : int { kFloat = 0, kInt8 = 1, kInt8Row = 2 };
constexpr int64_t kActBlock = 32;

// Who multiplies: kAuto picks oneDNN for kInt8Row with per-channel int8 weights and at
// least 64 activation rows when the build has it (and the ISA is not forced to ref), our
// kernels otherwise; kKernels always uses ours; kOneDnn requires the int8 case and throws
// std::invalid_argument elsewhere.
enum class QMatmulBackend : int { kAuto = 0, kKernels = 1, kOneDnn = 2 };

// Packed kernel families. Every format packs into one of them.
enum class PackedKind : int {
  kNibbleAffine,  // 4-bit codes q, w = s*q + o per group (int4, q4_0, q4_k)
  kNibbleTable,   // 4-bit codes into a 16-value table times a group scale (nf4)
  kInt8,          // int8 codes, w = s*q per group (int8, q8_0)
  kTernary,       // 2-bit codes c, w = s*(c-1), one scale (ternary)
  kDequantize,    // no fused kernel: rows are dequantized into a buffer (q6_k, tq2_0)
};

// Where element k of a group sits in the 4-bit code bytes of its row.
enum class NibbleOrder : int {
  kLowFirst,   // element 2i low nibble, 2i+1 high nibble of byte i (MatMulNBits)
  kHighFirst,  // element 2i high nibble, 2i+1 low nibble (bitsandbytes nf4)
  kSplit32,    // per 32 elements, element i<16 low nibble of byte i, i+16 high (q4_0)
  kSplit64,    // per 64 elements, element i<32 low nibble of byte i, i+32 high (q4_k)
};

struct PackedWeight {
  QuantSpec spec;
  int64_t N = 0, K = 0;
  PackedKind kind = PackedKind::kDequantize;
  NibbleOrder order = NibbleOrder::kLowFirst;
  int64_t group = 0;       // elements per scale (K for one scale per row)
  int64_t row_bytes = 0;   // code bytes per row
  int64_t row_groups = 0;  // scales (and offsets) per row
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;   // [N, row_groups]; ternary: one
  const float* offsets = nullptr;  // [N, row_groups] for kNibbleAffine
  ConstQuantStorage source;        // the quantized buffers (kDequantize reads these)
  std::vector<uint8_t> owned_codes;
  std::vector<float> owned_scales, owned_offsets;

  // kNibbleAffine and kNibbleTable: the same codes in row panels for the int8-activation kernels,
  // which keep one output row per int32 lane and run along K. Panel p holds rows
  // 16p..16p+15; per 8 elements k8..k8+7 it stores 16 rows x 4 bytes, byte i of a row
  // holding element k8+i in the low nibble and k8+4+i in the high nibble. Scales and
  // offsets per panel and group: [panels][row_groups][16]. Rows past N are zero.
  //
  // kInt8 (when each group holds whole 4-element quads): per 4 elements k4..k4+3 the
  // panel stores 16 rows x 4 codes as offset binary, w + 128 (unsigned, so VNNI can take
  // the weights as its unsigned operand and the correction depends on the activations
  // only); K is zero-padded (code 128) to whole 32-element segments.
  //
  // kTernary: per 16 elements k16..k16+15 the panel stores 16 rows x 4 bytes, bits 2j of
  // byte i holding the code (0, 1, 2) of element k16 + 4j + i; K is padded to whole
  // 32-element segments with code 1 (weight 0).
  static constexpr int64_t kPanelRows = 16;
  int64_t panel_octets = 0;  // kNibbleAffine: 8-element steps per row (code elements / 8)
  int64_t panel_quads = 0;   // kInt8: 4-element steps per row (padded K / 4)
  int64_t panel_hexads = 0;  // kTernary: 16-element steps per row (padded K / 16)
  std::vector<uint8_t> panel_codes;
  std::vector<float> panel_scales, panel_offsets;  // no offsets when o = -panel_zero_point * s
  int panel_zero_point = 0;                        // 8 for symmetric codes (int4, q4_0)
  // kNibbleTable (nf4): the panels hold the 4-bit codes and the kernels map them through
  // this 16-entry int8 table, round(127 * code value), stored as offset binary (+128);
  // panel_scales are then absmax / 127. The int8 rounding of the codebook (<= 0.4% of
  // absmax) is part of the int8-activation mode's error.
  uint8_t panel_table[16] = {};

  PackedWeight() = default;
  PackedWeight(const PackedWeight&) = delete;  // views point into the owned vectors
  PackedWeight& operator=(const PackedWeight&) = delete;
  PackedWeight(PackedWeight&&) = default;  // moving a vector keeps its buffer: views stay valid
  PackedWeight& operator=(PackedWeight&&) = default;
};

// Validates the spec against K and packs [N, K] weights stored as quant_layout says.
PackedWeight pack_weight(const QuantSpec& spec, ConstQuantStorage src, int64_t N, int64_t K);

// y [M, N] of y_dtype = x [M, K] of x_dtype @ W^T + bias (bias: N floats or nullptr).
// A row of x holding NaN or Inf gives an all-NaN row of y on every path (activation mode,
// ISA, oneDNN): the int8 modes cannot code it, and must not hide it in a finite row.
void qmatmul(const PackedWeight& w, const void* x, DType x_dtype, int64_t M, const float* bias, void* y, DType y_dtype,
             QMatmulActivation act, CpuIsa isa = CpuIsa::kAuto, QMatmulBackend backend = QMatmulBackend::kAuto);

// One weight of a qmatmul_group: y [M, N] fp32 = x @ W^T + bias (N floats or nullptr).
struct QMatmulTarget {
  const PackedWeight* w;
  const float* bias;
  float* y;
};

// qmatmul of one fp32 x [M, K] with several weights of the same K and layout (a decoder's
// q/k/v or gate/up projections): the activations are prepared once and every weight's
// panels run in one parallel region, so small weights share the threads instead of each
// paying a fork and an uneven split. Same results as qmatmul weight by weight.
void qmatmul_group(const std::vector<QMatmulTarget>& targets, const float* x, int64_t M, QMatmulActivation act,
                   CpuIsa isa = CpuIsa::kAuto);

// The machine's read bandwidth in GB/s, the ceiling of a memory-bound GEMV: the best of
// `repeats` parallel passes summing a buffer of `bytes` (make it several times the
// last-level cache) with the current threads and kernel set.
double measure_read_bandwidth(int64_t bytes, int repeats, CpuIsa isa = CpuIsa::kAuto);

}  // namespace slmops
