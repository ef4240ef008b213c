// Weight quantization formats and the kernels that quantize a 2-D weight [rows, K]
// (rows = output features, K = input features) row by row, and dequantize it back.
//
// Every format is described once, in the table in src/common/quant_formats.cpp; the
// Python layer reads that table through the bindings instead of restating it.
//
// Storage of one quantized tensor is at most three row-major buffers:
//   data        uint8  [rows, layout.data_bytes_per_row]
//   scales      float  [rows, layout.scales_per_row]  (ternary: one float for the tensor)
//   zero_points uint8  [rows, layout.zero_point_bytes_per_row]  (int4 asymmetric only)
// The GGUF block formats keep their fp16 scales inside the blocks of `data`.
#pragma once

#include <cstdint>
#include <string>

#include "slmops/cpu_features.h"
#include "slmops/dtype.h"

namespace slmops {

enum class QuantFormat : int {
  kInt8 = 0,  // int8, symmetric, one scale per row or per group along K
  kInt4,      // uint4 group-wise along K in the ONNX Runtime MatMulNBits layout
  kNF4,       // QLoRA NormalFloat4 codebook, absmax per block (bitsandbytes nibble order)
  kTernary,   // BitNet b1.58: {-1, 0, +1} times one absmean scale per tensor, 2 bits each
  kQ4_0,      // GGUF/ggml block formats, byte layout identical to ggml
  kQ8_0,
  kQ4_K,
  kQ6_K,
  kTQ2_0,
};
constexpr int kNumQuantFormats = 9;

struct QuantFormatInfo {
  QuantFormat format;
  const char* name;           // the user-facing name: "int4", "q4_k", ...
  int bits;                   // bits per stored weight code
  int block_size;             // fixed block (GGUF, nf4 default) or 0 when set by group_size
  int block_bytes;            // GGUF: bytes per block; 0 otherwise
  bool has_group_size;        // group_size is a user option
  bool has_symmetric_option;  // symmetric=False is allowed
  int default_group_size;     // 0 = one group per row (int8)
};

const QuantFormatInfo& quant_format_info(QuantFormat f);
// Throws std::invalid_argument naming the accepted formats.
QuantFormat quant_format_from_name(const std::string& name);

// Options of one quantization. group_size 0 means "the format's default".
struct QuantSpec {
  QuantFormat format = QuantFormat::kInt4;
  int64_t group_size = 0;
  bool symmetric = true;
};

struct QuantLayout {
  int64_t group_size;      // effective group/block size along K (0 = whole row)
  int64_t groups_per_row;  // ceil(K / group_size), 1 for whole-row int8
  int64_t data_bytes_per_row;
  int64_t scales_per_row;            // floats per row; 0 for GGUF and ternary
  int64_t zero_point_bytes_per_row;  // 0 unless int4 asymmetric
  bool tensor_scale;                 // one float scale for the whole tensor (ternary)
};

// Validates spec against K and returns the storage layout. Throws std::invalid_argument
// with what was wrong and what is expected (e.g. K not a multiple of a GGUF block).
QuantLayout quant_layout(const QuantSpec& spec, int64_t K);

struct QuantStorage {
  uint8_t* data = nullptr;
  float* scales = nullptr;
  uint8_t* zero_points = nullptr;
};
struct ConstQuantStorage {
  const uint8_t* data = nullptr;
  const float* scales = nullptr;
  const uint8_t* zero_points = nullptr;
};

// Quantizes src [rows, K] (C-contiguous, finite values) into dst, whose buffers are
// sized by quant_layout. `isa` picks the kernel set; kAuto uses the dispatcher's choice.
void quantize(const QuantSpec& spec, const void* src, DType src_dtype, int64_t rows, int64_t K, QuantStorage dst,
              CpuIsa isa = CpuIsa::kAuto);

// Dequantizes src into dst [rows, K] of dst_dtype.
void dequantize(const QuantSpec& spec, ConstQuantStorage src, int64_t rows, int64_t K, void* dst, DType dst_dtype,
                CpuIsa isa = CpuIsa::kAuto);

// Index of the first non-finite value of src [n], or -1. Used by callers that must
// reject NaN/Inf before quantizing (the kernels assume finite input).
int64_t find_non_finite(const void* src, DType dtype, int64_t n);

// --- NF4 double quantization -----------------------------------------------------
// The fp32 per-block absmax values (n of them) are stored as int8 codes in blocks of
// kNF4DoubleQuantBlock around their mean: a = offset + code * block_scale.
constexpr int64_t kNF4DoubleQuantBlock = 256;
void double_quantize_scales(const float* src, int64_t n, int8_t* codes, float* block_scales, float* offset);
void double_dequantize_scales(const int8_t* codes, const float* block_scales, float offset, int64_t n, float* dst);

// The 16 NF4 code values (QLoRA, Dettmers et al. 2023), index 0..15.
extern const float kNF4Codebook[16];

}  // namespace slmops
