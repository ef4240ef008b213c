// Reference qmatmul: each weight row dequantized by the ref row kernel, then a plain
// sequential float dot product with each activation row. The int8 activation mode uses
// the dequantized int8 activations (TileArgs::x), so it computes the same real numbers
// as the integer kernels, which only round differently.
#include <vector>

#include "cpu/qmatmul_kernels.h"

namespace slmops::cpu::ref {
namespace {

void tile_dequantize(const TileArgs& a, int64_t n0, int64_t n1) {
  const PackedWeight& w = *a.w;
  const QuantLayout L = quant_layout(w.spec, w.K);
  const RowParams p{L.group_size, w.spec.symmetric, 0.0f};
  const DequantizeRowFn dequantize = row_kernels().dequantize[int(w.spec.format)];
  std::vector<float> row(size_t(w.K));
  for (int64_t n = n0; n < n1; ++n) {
    dequantize(source_row(w, L, n), w.K, p, row.data());
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.x + m * w.K;
      float acc = 0.0f;
      for (int64_t k = 0; k < w.K; ++k) acc += x[k] * row[size_t(k)];
      a.y[m * w.N + n] = acc;
    }
  }
}

// nf4 with int8 activations: the int8 codebook of the panels (PackedWeight::panel_table),
// so every ISA computes the same products.
void tile_int8_act(const TileArgs& a, int64_t n0, int64_t n1) {
  const PackedWeight& w = *a.w;
  if (w.kind != PackedKind::kNibbleTable) return tile_dequantize(a, n0, n1);
  std::vector<float> row(size_t(w.K));
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t k = 0; k < w.K; ++k) {
      const int code = (w.codes[n * w.row_bytes + k / 2] >> ((k & 1) ? 0 : 4)) & 0xF;
      row[size_t(k)] = w.scales[n * w.row_groups + k / w.group] / 127.0f * float(int(w.panel_table[code]) - 128);
    }
    for (int64_t m = 0; m < a.M; ++m) {
      float acc = 0.0f;
      for (int64_t k = 0; k < w.K; ++k) acc += a.x[m * w.K + k] * row[size_t(k)];
      a.y[m * w.N + n] = acc;
    }
  }
}

float sum_f32(const float* src, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += src[i];
  return s;
}

}  // namespace

const QMatmulKernels& qmatmul_kernels() {
  static const QMatmulKernels k{tile_dequantize, tile_int8_act, sum_f32};
  return k;
}

}  // namespace slmops::cpu::ref
