// The blocked column loop that GPTQ and SparseGPT share (Frantar et al.'s lazy batch
// updates). Each row of W [N, K] is independent, so rows run in parallel.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "slmops/gptq.h"
#include "slmops/threading.h"

namespace slmops::gptq_detail {

// For each block of columns [i1, i2): before_block(i1, i2) (every row's earlier errors
// already applied to W), then for each row r: for j in [i1, i2), w[j] becomes
// target(r, j, w, i2) (w: the row, every earlier column's error already applied), and
// the error (w[j] - target) / U[j][j] is spread over the block's later columns along row
// j of U; the block's errors reach the columns after it through one sgemm.
template <class Target, class BeforeBlock>
void column_sweep(float* W, int64_t N, int64_t K, const float* U, int64_t block, Target&& target,
                  BeforeBlock&& before_block) {
  std::vector<float> E(size_t(N) * size_t(block));
  for (int64_t i1 = 0; i1 < K; i1 += block) {
    const int64_t i2 = std::min(K, i1 + block), B = i2 - i1;
    before_block(i1, i2);
    parallel_for(N, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* w = W + r * K;
        for (int64_t j = i1; j < i2; ++j) {
          const float t = target(r, j, w, i2);
          const float err = (w[j] - t) / U[j * K + j];
          w[j] = t;
          const float* u = U + j * K;
          for (int64_t k = j + 1; k < i2; ++k) w[k] -= err * u[k];
          E[r * B + (j - i1)] = err;
        }
      }
    });
    if (i2 < K) sgemm(false, false, N, K - i2, B, -1.0f, E.data(), B, U + i1 * K + i2, K, 1.0f, W + i2, K);
  }
}

inline void check_pattern(const SparsePattern& p, int64_t K) {
  if (p.m < 0 || p.n < 0 || (p.m > 0 && (p.n < 1 || p.n >= p.m || K % p.m)))
    throw std::invalid_argument("sparsegpt_prune: an n:m pattern needs 0 < n < m and K a multiple of m");
  if (p.m == 0 && !(p.sparsity >= 0.0f && p.sparsity < 1.0f))
    throw std::invalid_argument("sparsegpt_prune: sparsity must be in [0, 1)");
}

// SparseGPT's choice: mark (mask 0) the `count` entries of w[0, n) with the smallest
// w^2 / d^2 (d: the inverse Hessian factor's diagonal, stride ldd), the lower index first
// on a tie; the others are kept (mask 1). Shared by the blocked and the reference loop.
inline void prune_smallest(const float* w, const float* d, int64_t ldd, int64_t n, int64_t count, uint8_t* mask,
                           std::vector<int64_t>& order) {
  order.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  auto score = [&](int64_t i) { return (w[i] * w[i]) / (d[i * ldd] * d[i * ldd]); };
  auto less = [&](int64_t a, int64_t b) {
    const float sa = score(a), sb = score(b);
    return sa < sb || (sa == sb && a < b);
  };
  if (count > 0 && count < n) std::nth_element(order.begin(), order.begin() + count, order.end(), less);
  for (int64_t i = 0; i < n; ++i) mask[order[i]] = i < count ? 0 : 1;
}

// SparseGPT's unstructured choice within one block of columns [j, j + B) (the published
// rule: one threshold over all rows of the block, so rows keep different shares): mark
// the `count` entries of W[:, j:j+B) with the smallest w^2 / d^2 (d: U's diagonal), the
// lower (row, column) first on a tie.
inline void prune_block_smallest(const float* W, int64_t N, int64_t K, const float* U, int64_t j, int64_t B,
                                 int64_t count, uint8_t* mask, std::vector<int64_t>& order,
                                 std::vector<float>& scores) {
  order.resize(size_t(N * B));
  scores.resize(size_t(N * B));
  for (int64_t i = 0; i < N * B; ++i) {  // once each, not per comparison
    const int64_t r = i / B, c = j + i % B;
    const float w = W[r * K + c], d = U[c * K + c];
    order[size_t(i)] = i;
    scores[size_t(i)] = (w * w) / (d * d);
  }
  auto less = [&](int64_t a, int64_t b) {
    const float sa = scores[size_t(a)], sb = scores[size_t(b)];
    return sa < sb || (sa == sb && a < b);
  };
  if (count > 0 && count < N * B) std::nth_element(order.begin(), order.begin() + count, order.end(), less);
  for (int64_t i = 0; i < N * B; ++i) {
    const int64_t at = order[size_t(i)];
    mask[(at / B) * K + j + at % B] = i < count ? 0 : 1;
  }
}

}  // namespace slmops::gptq_detail
