// GPTQ's linear algebra, blocked so that the work is in sgemm: Hessian X^T X, the
// Cholesky factor of the inverse Hessian (factor the reversed matrix, invert the
// triangle, reverse back: H = R R^T with R upper gives H^-1 = U^T U with U = R^-1), and
// the column loop with lazy batch updates, parallel over the rows of W (independent).
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/column_sweep.h"
#include "cpu/gptq_grid.h"
#include "slmops/gptq.h"
#include "slmops/threading.h"

namespace slmops {
using namespace gptq_detail;

namespace {
constexpr int64_t kPanel = 128;  // block of the Cholesky and the triangular inverse

void check_dims(int64_t a, int64_t b, const char* what) {
  if (a <= 0 || b <= 0) throw std::invalid_argument(std::string(what) + ": dimensions must be positive");
}

}  // namespace

void hessian_accumulate(float* H, const float* X, int64_t n, int64_t K, int64_t ldx) {
  check_dims(K, 1, "hessian_accumulate");
  if (n <= 0) return;
  // X^T X is symmetric: compute the blocks on and above the diagonal (a syrk, about half
  // the flops of the full product at K = 4096), then mirror them below.
  constexpr int64_t kTile = 512;
  if (K <= kTile) {
    sgemm(true, false, K, K, n, 1.0f, X, ldx, X, ldx, 1.0f, H, K);
    return;
  }
  for (int64_t i0 = 0; i0 < K; i0 += kTile) {
    const int64_t bi = std::min(kTile, K - i0);
    sgemm(true, false, bi, K - i0, n, 1.0f, X + i0, ldx, X + i0, ldx, 1.0f, H + i0 * K + i0, K);
  }
  constexpr int64_t kT = 64;  // mirror in 64x64 tiles (kTile / kT whole tiles per block row)
  parallel_for((K + kT - 1) / kT, [&](int64_t t0, int64_t t1) {
    for (int64_t ti = t0; ti < t1; ++ti) {
      const int64_t i0 = ti * kT, i1 = std::min(K, i0 + kT);
      const int64_t j_end = (i0 / kTile) * kTile;  // left of this row's diagonal block
      for (int64_t j0 = 0; j0 < j_end; j0 += kT)
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = j0; j < std::min(j_end, j0 + kT); ++j) H[i * K + j] = H[j * K + i];
    }
  });
}

void cholesky_inverse_upper(float* H, int64_t K) {
  check_dims(K, 1, "cholesky_inverse_upper");
  const size_t KK = size_t(K) * size_t(K);
  std::vector<float> A(KK), X(KK, 0.0f), T(size_t(kPanel) * size_t(K));
  for (int64_t i = 0; i < K; ++i)  // reversed: A = P H P
    for (int64_t j = 0; j < K; ++j) A[i * K + j] = H[(K - 1 - i) * K + (K - 1 - j)];

  // Lower Cholesky A = L L^T, right-looking by panels; the trailing update is one sgemm.
  for (int64_t k0 = 0; k0 < K; k0 += kPanel) {
    const int64_t k1 = std::min(K, k0 + kPanel);
    for (int64_t j = k0; j < k1; ++j) {
      double d = A[j * K + j];
      for (int64_t k = k0; k < j; ++k) d -= double(A[j * K + k]) * A[j * K + k];
      if (!(d > 0.0) || !std::isfinite(d))
        throw std::domain_error("the Hessian is not positive definite (pivot " + std::to_string(K - 1 - j) +
                                "); increase damp");
      const float ljj = float(std::sqrt(d));
      A[j * K + j] = ljj;
      for (int64_t i = j + 1; i < k1; ++i) {
        double s = A[i * K + j];
        for (int64_t k = k0; k < j; ++k) s -= double(A[i * K + k]) * A[j * K + k];
        A[i * K + j] = float(s / ljj);
      }
    }
    parallel_for(K - k1, [&](int64_t r0, int64_t r1) {  // panel rows: solve with L11^T
      for (int64_t i = k1 + r0; i < k1 + r1; ++i)
        for (int64_t j = k0; j < k1; ++j) {
          double s = A[i * K + j];
          for (int64_t k = k0; k < j; ++k) s -= double(A[i * K + k]) * A[j * K + k];
          A[i * K + j] = float(s / A[j * K + j]);
        }
    });
    const int64_t m = K - k1;
    if (m > 0)
      sgemm(false, true, m, m, k1 - k0, -1.0f, &A[k1 * K + k0], K, &A[k1 * K + k0], K, 1.0f, &A[k1 * K + k1], K);
  }

  // X = L^-1 by block rows: X[I,I] directly, X[I,:I] = -X[I,I] (L[I,:I] X[:I,:I]).
  for (int64_t i0 = 0; i0 < K; i0 += kPanel) {
    const int64_t i1 = std::min(K, i0 + kPanel);
    for (int64_t j = i0; j < i1; ++j) {
      X[j * K + j] = 1.0f / A[j * K + j];
      for (int64_t i = j + 1; i < i1; ++i) {
        double s = 0.0;
        for (int64_t k = j; k < i; ++k) s += double(A[i * K + k]) * X[k * K + j];
        X[i * K + j] = float(-s / A[i * K + i]);
      }
    }
    if (i0 > 0) {
      sgemm(false, false, i1 - i0, i0, i0, 1.0f, &A[i0 * K], K, X.data(), K, 0.0f, T.data(), i0);
      sgemm(false, false, i1 - i0, i0, i1 - i0, -1.0f, &X[i0 * K + i0], K, T.data(), i0, 0.0f, &X[i0 * K], K);
    }
  }
  for (int64_t i = 0; i < K; ++i)  // U = P X P: upper
    for (int64_t j = 0; j < K; ++j) H[i * K + j] = j >= i ? X[(K - 1 - i) * K + (K - 1 - j)] : 0.0f;
}

void gptq_grid_params(const float* W, int64_t N, int64_t K, const GptqGrid& grid, float* scales, uint8_t* zeros) {
  check_dims(N, K, "gptq_grid_params");
  const int64_t G = grid.group_size > 0 ? grid.group_size : K;
  const int64_t groups = (K + G - 1) / G;
  parallel_for(N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t g = 0; g < groups; ++g)
        group_params(W + r * K + g * G, std::min(G, K - g * G), grid, scales + r * groups + g, zeros + r * groups + g);
  });
}

void gptq_quantize(float* W, int64_t N, int64_t K, const float* U, const GptqGrid& grid, const int32_t* col_group,
                   float* scales, uint8_t* zeros, uint8_t* codes, int64_t block) {
  check_dims(N, K, "gptq_quantize");
  const int64_t G = grid.group_size;
  if (!col_group && G <= 0) throw std::invalid_argument("gptq_quantize: group_size 0 needs col_group");
  if (grid.bits < 2 || grid.bits > 8) throw std::invalid_argument("gptq_quantize: bits must be in [2, 8]");
  int64_t n_groups = col_group ? 0 : (K + G - 1) / G;
  if (col_group)
    for (int64_t j = 0; j < K; ++j) n_groups = std::max<int64_t>(n_groups, int64_t(col_group[j]) + 1);
  if (!col_group) block = std::max(block, G) / G * G;  // a group never straddles two blocks
  auto target = [&](int64_t r, int64_t j, const float* w, int64_t) {
    const int64_t g = col_group ? col_group[j] : j / G;
    float* s = scales + r * n_groups + g;
    uint8_t* z = zeros + r * n_groups + g;
    if (!col_group && j % G == 0) group_params(w + j, std::min(G, K - j), grid, s, z);
    const int q = quantize_value(w[j], *s, *z, grid);
    codes[r * K + j] = uint8_t(q);
    return float(q - int(*z)) * *s;
  };
  column_sweep(W, N, K, U, block, target, [](int64_t, int64_t) {});
}

void sparsegpt_prune(float* W, int64_t N, int64_t K, const float* U, const SparsePattern& pattern, const GptqGrid* grid,
                     float* scales, uint8_t* zeros, uint8_t* codes, uint8_t* mask, int64_t block) {
  check_dims(N, K, "sparsegpt_prune");
  check_pattern(pattern, K);
  const int64_t G = grid ? (grid->group_size > 0 ? grid->group_size : K) : 0;
  if (grid && (grid->bits < 2 || grid->bits > 8))
    throw std::invalid_argument("sparsegpt_prune: bits must be in [2, 8]");
  const int64_t n_groups = grid ? (K + G - 1) / G : 0;
  const int64_t M = pattern.m;
  const int64_t unit = std::lcm(grid ? G : 1, M > 0 ? M : 1);  // no group or n:m set straddles two blocks
  block = std::max(block, unit) / unit * unit;
  // Unstructured: each block's zeros are chosen over all its rows at once, before the sweep.
  std::vector<int64_t> block_order;
  std::vector<float> block_scores;
  auto choose_block_zeros = [&](int64_t i1, int64_t i2) {
    if (M != 0) return;
    const int64_t count = int64_t(std::nearbyint(pattern.sparsity * float(N * (i2 - i1))));
    prune_block_smallest(W, N, K, U, i1, i2 - i1, count, mask, block_order, block_scores);
  };
  auto target = [&](int64_t r, int64_t j, const float* w, int64_t) {
    uint8_t* m = mask + r * K;
    if (M > 0 && j % M == 0) {  // n:m: choose this set's zeros from the weights as they are now
      thread_local std::vector<int64_t> order;
      prune_smallest(w + j, U + j * K + j, K + 1, M, M - pattern.n, m + j, order);
    }
    float t = m[j] ? w[j] : 0.0f;
    if (grid) {
      float* s = scales + r * n_groups + j / G;
      uint8_t* z = zeros + r * n_groups + j / G;
      if (j % G == 0) group_params(w + j, std::min(G, K - j), *grid, s, z);
      const int q = m[j] ? quantize_value(w[j], *s, *z, *grid) : int(*z);
      codes[r * K + j] = uint8_t(q);
      t = float(q - int(*z)) * *s;
    }
    return t;
  };
  column_sweep(W, N, K, U, block, target, choose_block_zeros);
}

}  // namespace slmops
