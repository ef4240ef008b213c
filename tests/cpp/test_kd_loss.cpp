// The distillation losses on every ISA against ref::kd_loss_fwd_bwd (double precision,
// written from the definitions), and the fused linear loss against kd_loss on the
// materialized logits and a float64 product for the two gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/half.h"
#include "slmops/cpu_features.h"
#include "slmops/kd_loss.h"

using namespace slmops;

namespace {

std::vector<float> randn(int64_t n, unsigned seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

struct TopK {
  std::vector<int64_t> ids;
  std::vector<float> logprobs;
};

// The k most likely ids of each teacher row and their log-probabilities at T = 1.
TopK top_k(const std::vector<float>& t, int64_t rows, int64_t V, int64_t k) {
  TopK out;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = t.data() + r * V;
    std::vector<int64_t> idx(static_cast<size_t>(V));
    for (int64_t j = 0; j < V; ++j) idx[size_t(j)] = j;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) { return row[a] > row[b]; });
    double m = row[idx[0]], d = 0.0;
    for (int64_t j = 0; j < V; ++j) d += std::exp(double(row[j]) - m);
    for (int64_t i = 0; i < k; ++i) {
      out.ids.push_back(idx[size_t(i)]);
      out.logprobs.push_back(float(row[idx[size_t(i)]] - m - std::log(d)));
    }
  }
  return out;
}

struct Case {
  Divergence div;
  float beta, T, hard;
  bool t2;
};

const Case kCases[] = {
    {Divergence::kForwardKl, 0.5f, 1.0f, 0.0f, true}, {Divergence::kForwardKl, 0.5f, 2.5f, 0.3f, true},
    {Divergence::kReverseKl, 0.5f, 1.0f, 0.0f, true}, {Divergence::kReverseKl, 0.5f, 0.7f, 0.5f, false},
    {Divergence::kJsd, 0.3f, 1.0f, 0.0f, true},       {Divergence::kJsd, 0.5f, 2.0f, 0.2f, true},
    {Divergence::kJsd, 0.0f, 1.5f, 0.0f, true},       {Divergence::kJsd, 1.0f, 1.5f, 0.0f, true},
    {Divergence::kForwardKl, 0.5f, 1.0f, 1.0f, true},
};

void expect_close(const std::vector<float>& got, const std::vector<float>& want, float atol, float rtol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], atol + rtol * std::fabs(want[i])) << what << " at " << i;
}

KdOptions options(const Case& c) {
  KdOptions o;
  o.divergence = c.div;
  o.beta = c.beta;
  o.temperature = c.T;
  o.hard_weight = c.hard;
  o.scale_t2 = c.t2;
  return o;
}

// rows x V student against a teacher of vocabulary Vt (dense) or its top-k.
void check_dense_and_topk(CpuIsa isa, int64_t rows, int64_t V, int64_t Vt, int64_t k) {
  const auto z = randn(rows * V, unsigned(V), 3.0f), t = randn(rows * Vt, unsigned(Vt + 1), 3.0f);
  std::vector<int64_t> labels(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) labels[size_t(r)] = r % 5 == 3 ? -100 : (r * 7919) % std::min(V, Vt);
  const TopK tk = top_k(t, rows, Vt, k);
  for (const Case& c : kCases) {
    for (bool use_topk : {false, true}) {
      if (use_topk && Vt != V) continue;
      KdTeacher teacher;
      if (use_topk) {
        teacher.topk_ids = tk.ids.data();
        teacher.topk_logprobs = tk.logprobs.data();
        teacher.k = k;
      } else {
        teacher.logits = t.data();
        teacher.vocab = Vt;
      }
      const KdOptions o = options(c);
      std::vector<float> loss(static_cast<size_t>(rows)), grad(static_cast<size_t>(rows * V));
      std::vector<float> loss_ref(loss.size()), grad_ref(grad.size());
      kd_loss_fwd_bwd(o, z.data(), DType::kF32, rows, V, teacher, labels.data(), 0.5f, loss.data(), grad.data(), isa);
      ref::kd_loss_fwd_bwd(o, z.data(), rows, V, teacher, labels.data(), 0.5f, loss_ref.data(), grad_ref.data());
      const std::string what = std::string(cpu_isa_name(isa)) + " div " + std::to_string(int(c.div)) + " beta " +
                               std::to_string(c.beta) + " T " + std::to_string(c.T) + " hard " +
                               std::to_string(c.hard) + (use_topk ? " top-k" : " dense") + " Vt " + std::to_string(Vt);
      expect_close(loss, loss_ref, 2e-5f, 2e-5f, what + " loss");
      expect_close(grad, grad_ref, 1e-6f, 1e-4f, what + " grad");
      // forward only gives the same losses
      std::vector<float> loss_fwd(loss.size());
      kd_loss_fwd_bwd(o, z.data(), DType::kF32, rows, V, teacher, labels.data(), 0.5f, loss_fwd.data(), nullptr, isa);
      expect_close(loss_fwd, loss, 0.0f, 1e-6f, what + " forward-only loss");
    }
  }
}

}  // namespace

TEST(KdLoss, MatchesReferenceOnEveryIsa) {
  for (CpuIsa isa : available_cpu_isas()) {
    check_dense_and_topk(isa, 13, 301, 301, 8);  // V not a multiple of any vector width
    check_dense_and_topk(isa, 4, 1000, 1000, 50);
  }
}

TEST(KdLoss, VocabularyMismatchComparesTheCommonIds) {
  for (CpuIsa isa : available_cpu_isas()) {
    check_dense_and_topk(isa, 6, 200, 232, 0);  // teacher head padded further
    check_dense_and_topk(isa, 6, 232, 200, 0);  // student head padded further
  }
  // The ids past the common vocabulary get no gradient.
  const int64_t rows = 3, V = 40, Vt = 32;
  const auto z = randn(rows * V, 1, 1.0f), t = randn(rows * Vt, 2, 1.0f);
  KdTeacher teacher;
  teacher.logits = t.data();
  teacher.vocab = Vt;
  std::vector<float> loss(rows), grad(size_t(rows * V), 1.0f);
  kd_loss_fwd_bwd(KdOptions{}, z.data(), DType::kF32, rows, V, teacher, nullptr, 1.0f, loss.data(), grad.data());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = Vt; j < V; ++j) EXPECT_EQ(grad[size_t(r * V + j)], 0.0f);
}

TEST(KdLoss, MaskedTeacherIdsGiveFiniteLossAndZeroProbability) {
  // A teacher logit of -inf (an id the teacher may never produce) must not turn into NaN.
  const int64_t V = 50;
  auto z = randn(V, 3, 1.0f), t = randn(V, 4, 1.0f);
  t[7] = -INFINITY;
  KdTeacher teacher;
  teacher.logits = t.data();
  teacher.vocab = V;
  for (CpuIsa isa : available_cpu_isas())
    for (Divergence d : {Divergence::kForwardKl, Divergence::kJsd}) {
      KdOptions o;
      o.divergence = d;
      float loss;
      std::vector<float> grad(V);
      kd_loss_fwd_bwd(o, z.data(), DType::kF32, 1, V, teacher, nullptr, 1.0f, &loss, grad.data(), isa);
      EXPECT_TRUE(std::isfinite(loss)) << cpu_isa_name(isa);
      for (float g : grad) EXPECT_TRUE(std::isfinite(g));
    }
}

TEST(KdLoss, HalfPrecisionStudentMatchesReferenceOnTheRoundedValues) {
  const int64_t rows = 5, V = 257;
  const auto z = randn(rows * V, 9, 2.0f), t = randn(rows * V, 10, 2.0f);
  for (DType dt : {DType::kF16, DType::kBF16}) {
    std::vector<uint16_t> zh(z.size()), th(t.size());
    std::vector<float> zr(z.size()), tr(t.size());
    for (size_t i = 0; i < z.size(); ++i) {
      zh[i] = dt == DType::kF16 ? f32_to_f16(z[i]) : f32_to_bf16(z[i]);
      th[i] = dt == DType::kF16 ? f32_to_f16(t[i]) : f32_to_bf16(t[i]);
      zr[i] = dt == DType::kF16 ? f16_to_f32(zh[i]) : bf16_to_f32(zh[i]);
      tr[i] = dt == DType::kF16 ? f16_to_f32(th[i]) : bf16_to_f32(th[i]);
    }
    KdTeacher teacher, teacher_ref;
    teacher.logits = th.data();
    teacher.dtype = dt;
    teacher.vocab = V;
    teacher_ref.logits = tr.data();
    teacher_ref.vocab = V;
    KdOptions o;
    o.divergence = Divergence::kJsd;
    o.temperature = 2.0f;
    std::vector<float> loss(rows), loss_ref(rows), grad_ref(size_t(rows * V));
    std::vector<uint16_t> grad(size_t(rows * V));
    kd_loss_fwd_bwd(o, zh.data(), dt, rows, V, teacher, nullptr, 1.0f, loss.data(), grad.data());
    ref::kd_loss_fwd_bwd(o, zr.data(), rows, V, teacher_ref, nullptr, 1.0f, loss_ref.data(), grad_ref.data());
    expect_close(loss, loss_ref, 1e-5f, 1e-5f, "half loss");
    std::vector<float> g(grad.size());
    for (size_t i = 0; i < g.size(); ++i) g[i] = dt == DType::kF16 ? f16_to_f32(grad[i]) : bf16_to_f32(grad[i]);
    expect_close(g, grad_ref, 1e-6f, dt == DType::kF16 ? 2e-3f : 1e-2f, "half grad");
  }
}

TEST(KdLoss, RejectsBadInputWithTheRow) {
  const int64_t rows = 2, V = 10, k = 3;
  const auto z = randn(rows * V, 5, 1.0f);
  std::vector<int64_t> ids = {1, 2, 3, 4, 4, 5};
  std::vector<float> lp(6, std::log(0.1f));
  KdTeacher teacher;
  teacher.topk_ids = ids.data();
  teacher.topk_logprobs = lp.data();
  teacher.k = k;
  std::vector<float> loss(rows);
  try {
    kd_loss_fwd_bwd(KdOptions{}, z.data(), DType::kF32, rows, V, teacher, nullptr, 1.0f, loss.data(), nullptr);
    FAIL() << "a repeated id must be rejected";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("row 1"), std::string::npos) << e.what();
  }
  ids = {1, 2, 3, 4, 5, 10};
  EXPECT_THROW(
      kd_loss_fwd_bwd(KdOptions{}, z.data(), DType::kF32, rows, V, teacher, nullptr, 1.0f, loss.data(), nullptr),
      std::invalid_argument);
  ids = {1, 2, 3, 4, 5, 6};
  lp = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};  // logits passed as log-probabilities
  EXPECT_THROW(
      kd_loss_fwd_bwd(KdOptions{}, z.data(), DType::kF32, rows, V, teacher, nullptr, 1.0f, loss.data(), nullptr),
      std::invalid_argument);
  KdTeacher dense;
  const auto t = randn(rows * V, 6, 1.0f);
  dense.logits = t.data();
  dense.vocab = V;
  KdOptions o;
  o.hard_weight = 0.5f;
  std::vector<int64_t> labels = {3, 10};
  EXPECT_THROW(kd_loss_fwd_bwd(o, z.data(), DType::kF32, rows, V, dense, labels.data(), 1.0f, loss.data(), nullptr),
               std::invalid_argument);
  EXPECT_THROW(kd_loss_fwd_bwd(o, z.data(), DType::kF32, rows, V, dense, nullptr, 1.0f, loss.data(), nullptr),
               std::invalid_argument);
  o.hard_weight = 0.0f;
  o.temperature = 0.0f;
  EXPECT_THROW(kd_loss_fwd_bwd(o, z.data(), DType::kF32, rows, V, dense, nullptr, 1.0f, loss.data(), nullptr),
               std::invalid_argument);
}

TEST(FusedLinearKdLoss, MatchesKdLossOnTheLogitsAndTheProductsOfItsGradient) {
  const int64_t rows = 37, H = 24, V = 203, Ht = 16;
  const auto X = randn(rows * H, 11, 1.0f), Wt = randn(V * H, 12, 0.3f);
  const auto Xt = randn(rows * Ht, 13, 1.0f), Wtt = randn(V * Ht, 14, 0.4f);
  std::vector<int64_t> labels(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) labels[size_t(r)] = r % 6 == 0 ? -100 : (r * 31) % V;
  // materialized logits (double products rounded to float) for the reference
  auto matmul_t = [](const std::vector<float>& A, const std::vector<float>& B, int64_t M, int64_t N, int64_t K) {
    std::vector<float> C(static_cast<size_t>(M * N));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double acc = 0.0;
        for (int64_t k = 0; k < K; ++k) acc += double(A[size_t(i * K + k)]) * B[size_t(j * K + k)];
        C[size_t(i * N + j)] = float(acc);
      }
    return C;
  };
  const auto Z = matmul_t(X, Wt, rows, V, H), TZ = matmul_t(Xt, Wtt, rows, V, Ht);
  KdOptions o;
  o.divergence = Divergence::kJsd;
  o.temperature = 1.5f;
  o.hard_weight = 0.25f;
  KdTeacher by_logits;
  by_logits.logits = TZ.data();
  by_logits.vocab = V;
  std::vector<float> loss_ref(rows), G(size_t(rows * V));
  ref::kd_loss_fwd_bwd(o, Z.data(), rows, V, by_logits, labels.data(), 0.1f, loss_ref.data(), G.data());
  std::vector<float> dX_ref(size_t(rows * H), 0.0f), dW_ref(size_t(V * H), 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t v = 0; v < V; ++v) {
      const double g = G[size_t(r * V + v)];
      for (int64_t h = 0; h < H; ++h) {
        dX_ref[size_t(r * H + h)] += float(g * Wt[size_t(v * H + h)]);
        dW_ref[size_t(v * H + h)] += float(g * X[size_t(r * H + h)]);
      }
    }
  KdTeacher by_hidden;
  by_hidden.hidden = Xt.data();
  by_hidden.head = Wtt.data();
  by_hidden.hidden_size = Ht;
  by_hidden.vocab = V;
  for (const KdTeacher& teacher : {by_logits, by_hidden})
    for (int64_t chunk : {int64_t(0), int64_t(5), int64_t(64)}) {
      std::vector<float> loss(rows), dX(size_t(rows * H)), dW(size_t(V * H), 0.0f);
      fused_linear_kd_loss(o, X.data(), Wt.data(), rows, H, V, teacher, labels.data(), 0.1f, loss.data(), dX.data(),
                           dW.data(), chunk);
      const std::string what = std::string(teacher.hidden ? "hidden" : "logits") + " chunk " + std::to_string(chunk);
      expect_close(loss, loss_ref, 1e-4f, 1e-4f, what + " loss");
      expect_close(dX, dX_ref, 1e-5f, 1e-3f, what + " d_hidden");
      expect_close(dW, dW_ref, 1e-5f, 1e-3f, what + " d_weight");
    }
}

TEST(FusedLinearKdLoss, ChunkHoldsAtMost64MBOfLogits) {
  EXPECT_EQ(fused_kd_chunk_rows(4096, 32000), 512);  // 512 * 32000 * 4 B = 65.5 MB
  EXPECT_EQ(fused_kd_chunk_rows(4096, 128256), 128);
  EXPECT_EQ(fused_kd_chunk_rows(10, 32000), 10);  // never more than the rows
  EXPECT_EQ(fused_kd_chunk_rows(4096, 4000000), 16);
}
