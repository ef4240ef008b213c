// The per-row kernel table that every ISA (ref, avx2, avx512) fills in. The driver in
// quant_dispatch.cpp owns threading, dtype conversion and buffer offsets, so a row
// kernel only sees one row of fp32 values and the matching slice of each buffer.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "slmops/quant.h"

namespace slmops::cpu {

struct RowParams {
  int64_t group_size;  // effective group/block size along K (0 = whole row)
  bool symmetric;
  float tensor_scale;  // ternary: the per-tensor absmean scale, already clamped
};

struct RowDst {
  uint8_t* data;
  float* scales;
  uint8_t* zero_points;
};
struct RowSrc {
  const uint8_t* data;
  const float* scales;
  const uint8_t* zero_points;
};

using QuantizeRowFn = void (*)(const float* src, int64_t K, const RowParams& p, RowDst dst);
using DequantizeRowFn = void (*)(RowSrc src, int64_t K, const RowParams& p, float* dst);
using ToF32Fn = void (*)(const void* src, int64_t n, float* dst);
using FromF32Fn = void (*)(const float* src, int64_t n, void* dst);

struct RowKernels {
  std::array<QuantizeRowFn, kNumQuantFormats> quantize;
  std::array<DequantizeRowFn, kNumQuantFormats> dequantize;
  ToF32Fn f16_to_f32, bf16_to_f32;
  FromF32Fn f32_to_f16, f32_to_bf16;
};

// The kernel set `isa` selects (kAuto: the dispatcher's choice); throws if it cannot run here.
const RowKernels& row_kernels_for(CpuIsa isa);

// NaN in, NaN out for the matmul drivers (qmatmul, spmm): the rows of x [M, K] (fp32)
// holding NaN or Inf, one flag per row, or an empty vector when there are none. Those rows
// are not quantized (the int8 modes cannot code them: they would give finite garbage), and
// fill_nan_rows makes their outputs y [M, N] all NaN, whatever path computed the others.
std::vector<uint8_t> non_finite_rows(const float* x, int64_t M, int64_t K);
void fill_nan_rows(const std::vector<uint8_t>& rows, int64_t N, float* y);

namespace ref { const RowKernels& row_kernels(); }
#ifdef SLMOPS_HAVE_AVX2
namespace avx2 { const RowKernels& row_kernels(); }
#endif
#ifdef SLMOPS_HAVE_AVX512
namespace avx512 { const RowKernels& row_kernels(); }
#endif

// The ternary code of value v in {-1, 0, +1} is v + 1, four codes per byte, element i
// of the row at bits 2*(i%4) of byte i/4. Code 1 (value 0) pads the last byte.
constexpr uint8_t kTernaryPadByte = 0x55;

}  // namespace slmops::cpu
