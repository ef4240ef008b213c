// GPTQ's blocked kernels against the scalar references (slmops::ref), and sgemm against
// a direct triple loop.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "slmops/gptq.h"

namespace {

std::vector<float> gaussian(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

// A positive definite Hessian from correlated samples, damped as GPTQ damps it.
std::vector<float> hessian(int64_t K, int64_t n, unsigned seed) {
  auto z = gaussian(size_t(n * K), seed), mix = gaussian(size_t(K * K), seed + 1);
  std::vector<float> X(size_t(n * K), 0.0f), H(size_t(K * K), 0.0f);
  slmops::sgemm(false, false, n, K, K, 0.2f, z.data(), K, mix.data(), K, 0.0f, X.data(), K);
  slmops::hessian_accumulate(H.data(), X.data(), n, K, K);
  double mean = 0.0;
  for (int64_t i = 0; i < K; ++i) mean += H[i * K + i] / K;
  for (int64_t i = 0; i < K; ++i) H[i * K + i] += float(0.01 * mean);
  return H;
}

TEST(Gptq, SgemmMatchesTripleLoop) {
  const int64_t M = 37, N = 29, K = 41;
  auto A = gaussian(size_t(K * M), 1), B = gaussian(size_t(N * K), 2), C = gaussian(size_t(M * N), 3);
  auto D = C;
  slmops::sgemm(true, true, M, N, K, 0.5f, A.data(), M, B.data(), K, 2.0f, D.data(), N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k) s += double(A[k * M + i]) * B[j * K + k];
      EXPECT_NEAR(D[i * N + j], 0.5 * s + 2.0 * C[i * N + j], 1e-4) << i << "," << j;
    }
}

TEST(Gptq, HessianMatchesReference) {
  for (int64_t K : {70, 1100}) {  // one product; and upper blocks of 512 columns, mirrored
    const int64_t n = 90, ldx = K + 3;
    auto X = gaussian(size_t(n * ldx), 4);
    auto S = gaussian(size_t(K * K), 5);
    std::vector<float> H(size_t(K * K));
    for (int64_t i = 0; i < K; ++i)  // a symmetric start, as from earlier batches
      for (int64_t j = 0; j < K; ++j) H[i * K + j] = S[std::min(i, j) * K + std::max(i, j)];
    auto R = H;
    slmops::hessian_accumulate(H.data(), X.data(), n, K, ldx);
    slmops::ref::hessian_accumulate(R.data(), X.data(), n, K, ldx);
    for (size_t i = 0; i < H.size(); ++i)
      ASSERT_NEAR(H[i], R[i], 1e-3f * (1.0f + std::fabs(R[i]))) << "K " << K << " at " << i;
  }
}

TEST(Gptq, BlockedInverseCholeskyMatchesReference) {
  for (int64_t K : {1, 5, 128, 300}) {  // below, at and across the 128 panel
    auto H = hessian(K, 2 * K + 8, 7), R = H;
    slmops::cholesky_inverse_upper(H.data(), K);
    slmops::ref::cholesky_inverse_upper(R.data(), K);
    float scale = 0.0f;
    for (float r : R) scale = std::max(scale, std::fabs(r));
    for (size_t i = 0; i < H.size(); ++i) ASSERT_NEAR(H[i], R[i], 2e-4f * scale) << "K=" << K << " at " << i;
  }
  std::vector<float> bad = {1.0f, 2.0f, 2.0f, 1.0f};  // indefinite
  EXPECT_THROW(slmops::cholesky_inverse_upper(bad.data(), 2), std::domain_error);
}

TEST(Gptq, BlockedColumnLoopMatchesReference) {
  const int64_t N = 24, K = 200;
  auto U = hessian(K, 400, 11);
  slmops::cholesky_inverse_upper(U.data(), K);
  const auto W0 = gaussian(size_t(N * K), 12);
  for (const slmops::GptqGrid grid :
       {slmops::GptqGrid{4, true, 32}, slmops::GptqGrid{3, false, 64}, slmops::GptqGrid{3, true, 64, /*mse=*/true}}) {
    const int64_t groups = (K + grid.group_size - 1) / grid.group_size;
    auto W = W0, Wr = W0;
    std::vector<float> s(size_t(N * groups)), sr = s;
    std::vector<uint8_t> z(size_t(N * groups)), zr = z, c(size_t(N * K)), cr = c;
    slmops::gptq_quantize(W.data(), N, K, U.data(), grid, nullptr, s.data(), z.data(), c.data(), 64);
    slmops::ref::gptq_quantize(Wr.data(), N, K, U.data(), grid, nullptr, sr.data(), zr.data(), cr.data());
    int64_t same = 0;
    for (size_t i = 0; i < c.size(); ++i) same += c[i] == cr[i];
    EXPECT_GT(double(same) / double(c.size()), 0.99);                       // summation order may flip a rounding
    for (size_t i = 0; i < W.size(); ++i) EXPECT_NEAR(W[i], Wr[i], 0.35f);  // one step at most
  }
}

TEST(SparseGpt, BlockedMatchesReferenceAndPattern) {
  const int64_t N = 16, K = 256;
  auto U = hessian(K, 512, 21);
  slmops::cholesky_inverse_upper(U.data(), K);
  const auto W0 = gaussian(size_t(N * K), 22);
  const slmops::GptqGrid grid{4, false, 64, /*mse=*/true};
  for (const slmops::SparsePattern p :
       {slmops::SparsePattern{0.5f, 0, 0}, slmops::SparsePattern{0.0f, 2, 4}, slmops::SparsePattern{0.0f, 4, 8}}) {
    for (const slmops::GptqGrid* g : {static_cast<const slmops::GptqGrid*>(nullptr), &grid}) {
      auto W = W0, Wr = W0;
      std::vector<float> s(size_t(N * 4)), sr = s;
      std::vector<uint8_t> z(size_t(N * 4)), zr = z, c(size_t(N * K)), cr = c, m(size_t(N * K)), mr = m;
      slmops::sparsegpt_prune(W.data(), N, K, U.data(), p, g, s.data(), z.data(), c.data(), m.data());
      slmops::ref::sparsegpt_prune(Wr.data(), N, K, U.data(), p, g, sr.data(), zr.data(), cr.data(), mr.data());
      int64_t same = 0, kept = 0;
      for (size_t i = 0; i < m.size(); ++i) {
        same += m[i] == mr[i];
        kept += m[i];
        if (!m[i]) {
          ASSERT_EQ(W[i], 0.0f) << "a pruned weight is not zero at " << i;
        }
      }
      EXPECT_GT(double(same) / double(m.size()), 0.99) << "n:m " << p.n << ":" << p.m;
      EXPECT_EQ(kept, N * K / 2);  // every pattern here keeps half of the weights
      if (p.m == 0) {              // the published rule: one threshold over a block's rows, so rows' shares differ
        std::set<int> shares;
        for (int64_t r = 0; r < N; ++r) {
          int in_block = 0;
          for (int64_t k = 0; k < 128; ++k) in_block += m[size_t(r * K + k)];
          shares.insert(in_block);
        }
        EXPECT_GT(shares.size(), 1u) << "every row kept the same share of the first block";
      }
      if (p.m > 0)  // n kept in every set of m
        for (int64_t i = 0; i < N * K; i += p.m) {
          int in_set = 0;
          for (int64_t t = 0; t < p.m; ++t) in_set += m[size_t(i + t)];
          ASSERT_EQ(in_set, p.n) << "set at " << i;
        }
      double diff = 0.0, norm = 0.0;
      for (size_t i = 0; i < W.size(); ++i) {
        diff += double(W[i] - Wr[i]) * (W[i] - Wr[i]);
        norm += double(Wr[i]) * Wr[i];
      }
      EXPECT_LT(std::sqrt(diff / norm), 0.05);
    }
  }
  slmops::SparsePattern bad{0.0f, 4, 4};
  std::vector<uint8_t> m(size_t(N * K));
  auto W = W0;
  EXPECT_THROW(slmops::sparsegpt_prune(W.data(), N, K, U.data(), bad, nullptr, nullptr, nullptr, nullptr, m.data()),
               std::invalid_argument);
}

}  // namespace
