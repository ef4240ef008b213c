// Reference sparse matmul: every kept weight decoded by the scalar helpers, plain
// sequential float sums.
#include <algorithm>

#include "cpu/spmm_kernels.h"

namespace slmops::cpu::ref {
namespace {

void nm_rows(const NMSparseWeight& w, const float* x, int64_t M, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.0f;
      for (int64_t j = 0; j < w.kept(); ++j) acc += nm_value(w, n, j) * x[m * w.K + nm_column(w, n, j)];
      y[m * w.N + n] = acc;
    }
}

void csr_rows(const CsrWeight& w, const float* x, int64_t M, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.0f;
      for (int64_t i = w.row_ptr[n]; i < w.row_ptr[n + 1]; ++i) acc += w.values[i] * x[m * w.K + csr_column(w, i)];
      y[m * w.N + n] = acc;
    }
}

void nm_decode(const NMSparseWeight& w, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* vals, int32_t* cols,
               int64_t stride) {
  const int64_t j0 = k0 / w.m * w.n, j1 = k1 / w.m * w.n;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t j = j0; j < j1; ++j) {
      vals[(n - n0) * stride + j - j0] = nm_value(w, n, j);
      cols[(n - n0) * stride + j - j0] = int32_t(nm_column(w, n, j));
    }
}

void accumulate(const float* vals, const int32_t* cols, int64_t count, const float* xT, int64_t ld, int64_t width,
                float* acc) {
  for (int64_t j = 0; j < count; ++j) {
    const float* src = xT + int64_t(cols[j]) * ld;
    for (int64_t m = 0; m < width; ++m) acc[m] += vals[j] * src[m];
  }
}

}  // namespace

const SpmmKernels& spmm_kernels() {
  static const SpmmKernels k{nm_rows, csr_rows, nm_decode, accumulate, nullptr};
  return k;
}

}  // namespace slmops::cpu::ref
