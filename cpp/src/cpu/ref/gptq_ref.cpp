// Scalar references for GPTQ's linear algebra: textbook loops in double where it helps,
// no blocking, no threads. The oracle for the blocked kernels in cpu/gptq.cpp.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/column_sweep.h"
#include "cpu/gptq_grid.h"
#include "slmops/gptq.h"

namespace slmops::ref {
using namespace gptq_detail;

void hessian_accumulate(float* H, const float* X, int64_t n, int64_t K, int64_t ldx) {
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) {
      double s = 0.0;
      for (int64_t t = 0; t < n; ++t) s += double(X[t * ldx + i]) * X[t * ldx + j];
      H[i * K + j] += float(s);
    }
}

void cholesky_inverse_upper(float* H, int64_t K) {
  // H^-1 by Cholesky (H = L L^T, H^-1 = L^-T L^-1), then the upper Cholesky factor of it.
  std::vector<double> L(size_t(K * K), 0.0), Li(size_t(K * K), 0.0), Hi(size_t(K * K), 0.0);
  for (int64_t j = 0; j < K; ++j) {
    double d = H[j * K + j];
    for (int64_t k = 0; k < j; ++k) d -= L[j * K + k] * L[j * K + k];
    if (!(d > 0.0)) throw std::domain_error("the Hessian is not positive definite");
    L[j * K + j] = std::sqrt(d);
    for (int64_t i = j + 1; i < K; ++i) {
      double s = H[i * K + j];
      for (int64_t k = 0; k < j; ++k) s -= L[i * K + k] * L[j * K + k];
      L[i * K + j] = s / L[j * K + j];
    }
  }
  for (int64_t j = 0; j < K; ++j) {
    Li[j * K + j] = 1.0 / L[j * K + j];
    for (int64_t i = j + 1; i < K; ++i) {
      double s = 0.0;
      for (int64_t k = j; k < i; ++k) s += L[i * K + k] * Li[k * K + j];
      Li[i * K + j] = -s / L[i * K + i];
    }
  }
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) {
      double s = 0.0;
      for (int64_t k = std::max(i, j); k < K; ++k) s += Li[k * K + i] * Li[k * K + j];
      Hi[i * K + j] = s;
    }
  // Upper Cholesky Hi = U^T U: row i of U from the top.
  std::vector<double> U(size_t(K * K), 0.0);
  for (int64_t i = 0; i < K; ++i) {
    double d = Hi[i * K + i];
    for (int64_t k = 0; k < i; ++k) d -= U[k * K + i] * U[k * K + i];
    U[i * K + i] = std::sqrt(d);
    for (int64_t j = i + 1; j < K; ++j) {
      double s = Hi[i * K + j];
      for (int64_t k = 0; k < i; ++k) s -= U[k * K + i] * U[k * K + j];
      U[i * K + j] = s / U[i * K + i];
    }
  }
  for (int64_t i = 0; i < K * K; ++i) H[i] = float(U[i]);
}

void gptq_quantize(float* W, int64_t N, int64_t K, const float* U, const GptqGrid& grid, const int32_t* col_group,
                   float* scales, uint8_t* zeros, uint8_t* codes) {
  const int64_t G = grid.group_size;
  int64_t n_groups = col_group ? 0 : (K + G - 1) / G;
  if (col_group)
    for (int64_t j = 0; j < K; ++j) n_groups = std::max<int64_t>(n_groups, int64_t(col_group[j]) + 1);
  for (int64_t j = 0; j < K; ++j) {
    for (int64_t r = 0; r < N; ++r) {
      float* w = W + r * K;
      const int64_t g = col_group ? col_group[j] : j / G;
      float* s = scales + r * n_groups + g;
      uint8_t* z = zeros + r * n_groups + g;
      if (!col_group && j % G == 0) group_params(w + j, std::min(G, K - j), grid, s, z);
      const int q = quantize_value(w[j], *s, *z, grid);
      const float deq = float(q - int(*z)) * *s;
      codes[r * K + j] = uint8_t(q);
      const float err = (w[j] - deq) / U[j * K + j];
      w[j] = deq;
      for (int64_t k = j + 1; k < K; ++k) w[k] -= err * U[j * K + k];
    }
  }
}

void sparsegpt_prune(float* W, int64_t N, int64_t K, const float* U, const SparsePattern& pattern, const GptqGrid* grid,
                     float* scales, uint8_t* zeros, uint8_t* codes, uint8_t* mask) {
  gptq_detail::check_pattern(pattern, K);
  const int64_t G = grid ? (grid->group_size > 0 ? grid->group_size : K) : 0;
  const int64_t n_groups = grid ? (K + G - 1) / G : 0;
  const int64_t M = pattern.m;
  const int64_t unit = std::lcm(grid ? G : 1, M > 0 ? M : 1);
  const int64_t block = std::max<int64_t>(128, unit) / unit * unit;  // where the blocked loop chooses
  std::vector<int64_t> order;
  std::vector<float> scores;
  for (int64_t j = 0; j < K; ++j) {
    if (M == 0 && j % block == 0) {  // unstructured: one threshold over the block's rows
      const int64_t B = std::min(block, K - j);
      gptq_detail::prune_block_smallest(W, N, K, U, j, B, int64_t(std::nearbyint(pattern.sparsity * float(N * B))),
                                        mask, order, scores);
    }
    for (int64_t r = 0; r < N; ++r) {
      float* w = W + r * K;
      uint8_t* m = mask + r * K;
      if (M > 0 && j % M == 0) gptq_detail::prune_smallest(w + j, U + j * K + j, K + 1, M, M - pattern.n, m + j, order);
      float t = m[j] ? w[j] : 0.0f;
      if (grid) {
        float* s = scales + r * n_groups + j / G;
        uint8_t* z = zeros + r * n_groups + j / G;
        if (j % G == 0) group_params(w + j, std::min(G, K - j), *grid, s, z);
        const int q = m[j] ? quantize_value(w[j], *s, *z, *grid) : int(*z);
        codes[r * K + j] = uint8_t(q);
        t = float(q - int(*z)) * *s;
      }
      const float err = (w[j] - t) / U[j * K + j];
      w[j] = t;
      for (int64_t k = j + 1; k < K; ++k) w[k] -= err * U[j * K + k];
    }
  }
}

}  // namespace slmops::ref
