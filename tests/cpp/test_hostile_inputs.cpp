// Layer 0 under hostile input: sizes that overflow, weights whose fp16 block scales
// overflow, NaN/Inf activations and distillation rows, crafted sparse layouts. Each test
// names the failure it guards against; the sanitizer build (.ci/sanitizers) runs them too.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant_cases.h"
#include "slmops/kd_loss.h"
#include "slmops/qmatmul.h"
#include "slmops/quant.h"
#include "slmops/spmm.h"

using namespace slmops;
using namespace slmops::test_cases;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

std::vector<float> randn(int64_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

// Runs fn and returns the std::invalid_argument message it throws ("" if none).
template <class Fn>
std::string invalid_message(Fn fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

bool all_nan(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isnan(p[i])) return false;
  return true;
}

}  // namespace

TEST(QuantLayout, GroupSizesNearInt64MaxDoNotWrap) {
  // K + group_size - 1 wrapped to a negative count: zero groups, so no scales were required
  // and the kernel stored through a null scale pointer.
  const QuantLayout L = quant_layout({QuantFormat::kInt8, kMax, true}, 256);
  EXPECT_EQ(L.groups_per_row, 1);
  EXPECT_EQ(L.scales_per_row, 1);
  const QuantLayout T = quant_layout({QuantFormat::kTernary, 0, true}, kMax);
  EXPECT_EQ(T.data_bytes_per_row, kMax / 4 + 1);
  // 34 bytes per block of 32: the byte count of a row past int64 is an error, not a wrap.
  const std::string msg = invalid_message([] { quant_layout({QuantFormat::kQ8_0, 0, true}, kMax / 32 * 32); });
  EXPECT_NE(msg.find("overflows"), std::string::npos) << msg;
}

TEST(Quantize, Fp16BlockScaleOverflowRaisesNamingTheLargestMagnitude) {
  // Finite weights past a GGUF format's range got an Inf fp16 scale and dequantized to
  // Inf/NaN. At the limit (65504 times the largest code) they stay finite and exact.
  struct Limit {
    QuantFormat format;
    float at, past;
    const char* named;
  };
  const Limit limits[] = {{QuantFormat::kQ4_0, 524032.0f, 6e5f, "524032"},
                          {QuantFormat::kQ8_0, 8319008.0f, 8.4e6f, "8319008"},
                          {QuantFormat::kQ4_K, -4126752.0f, -4.2e6f, "4126752"},
                          {QuantFormat::kQ6_K, 268304384.0f, 2.7e8f, "268304384"},
                          {QuantFormat::kTQ2_0, 65504.0f, 7e4f, "65504"}};
  const int64_t rows = 3, K = 512;
  for (const Limit& l : limits) {
    const QuantSpec spec{l.format, 0, true};
    const char* name = quant_format_info(l.format).name;
    for (CpuIsa isa : available_cpu_isas()) {
      SCOPED_TRACE(std::string(name) + " " + cpu_isa_name(isa));
      std::vector<float> w = randn(rows * K, 3, 0.1f);
      std::fill(w.begin() + K, w.begin() + 2 * K, l.at);  // row 1 at the limit
      const Quantized q = quantize_with(spec, w.data(), DType::kF32, rows, K, isa);
      const std::vector<float> back = dequantize_with(spec, q, rows, K, isa);
      for (int64_t i = K; i < 2 * K; ++i) ASSERT_EQ(back[size_t(i)], l.at) << i;
      w[size_t(2 * K + 300)] = l.past;  // row 2, second 256-block
      const std::string msg = invalid_message([&] { quantize_with(spec, w.data(), DType::kF32, rows, K, isa); });
      EXPECT_NE(msg.find(std::string("'") + name + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find(l.named), std::string::npos) << msg;
      EXPECT_NE(msg.find("row 2"), std::string::npos) << msg;
    }
  }
}

TEST(Quantize, Float32ScaleOverflowRaises) {
  // int4 asymmetric: (max - min) / 15 of [-3e38, 3e38] is Inf in float32; the codes then
  // dequantize to NaN. Every other format's scale is at most its absmax.
  const QuantSpec spec{QuantFormat::kInt4, 32, false};
  std::vector<float> w = randn(2 * 64, 5);
  w[70] = -3e38f;
  w[71] = 3e38f;
  for (CpuIsa isa : available_cpu_isas()) {
    const std::string msg = invalid_message([&] { quantize_with(spec, w.data(), DType::kF32, 2, 64, isa); });
    EXPECT_NE(msg.find("row 1, columns 0-31 overflows float32"), std::string::npos) << msg;
  }
}

TEST(Quantize, GroupsTooSmallForTheReciprocalOfTheirScaleQuantizeToZero) {
  // A scale below ~2^-128 has an Inf reciprocal: x * Inf made the codes Inf/NaN, converted
  // to int with undefined behaviour (UBSan: the ref tq2_0 kernel shifted INT_MIN), and the
  // SIMD kernels gave such groups codes of the wrong sign.
  for (const Case& c : kCases) {
    const QuantSpec spec{c.format, c.group_size, c.symmetric};
    const int64_t rows = 5, K = k_values(c)[1];
    std::vector<float> w = make_weights(rows, K, 3);
    for (float& v : w) v *= 1e-41f;  // absmax 1.3e-39: every group's reciprocal scale overflows
    const Quantized ref = quantize_with(spec, w.data(), DType::kF32, rows, K, CpuIsa::kRef);
    for (CpuIsa isa : available_cpu_isas()) {
      SCOPED_TRACE(case_name(c) + " " + cpu_isa_name(isa));
      const Quantized got = quantize_with(spec, w.data(), DType::kF32, rows, K, isa);
      EXPECT_EQ(got.data, ref.data);
      for (float v : dequantize_with(spec, got, rows, K, isa)) ASSERT_EQ(v, 0.0f);
    }
  }
}

namespace {

// y [M, N] in double from the ref-dequantized weight and activations xa (already int8
// rounded for the int8 modes), the oracle of the finite rows, and sum |w x| per output: the
// kernels' own roundings (nf4's int8 codebook in the int8 modes: <= 0.4% of a weight) are
// bounded by 1% of it.
struct Product {
  std::vector<double> y, magnitude;
};
Product reference_product(const std::vector<float>& w, const std::vector<float>& xa, int64_t M, int64_t N, int64_t K) {
  Product p{std::vector<double>(size_t(M * N), 0.0), std::vector<double>(size_t(M * N), 0.0)};
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const double v = double(w[size_t(n * K + k)]) * xa[size_t(m * K + k)];
        p.y[size_t(m * N + n)] += v;
        p.magnitude[size_t(m * N + n)] += std::fabs(v);
      }
  return p;
}

void expect_rows_close(const std::vector<float>& y, const Product& want, int64_t from, int64_t to) {
  for (int64_t i = from; i < to; ++i)
    ASSERT_NEAR(y[size_t(i)], want.y[size_t(i)], 1e-2 * want.magnitude[size_t(i)] + 1e-6) << i;
}

// x's rows as the int8 modes see them: the int8 format's quantization, dequantized.
std::vector<float> int8_rounded(const std::vector<float>& x, int64_t M, int64_t K, QMatmulActivation act) {
  if (act == QMatmulActivation::kFloat) return x;
  const QuantSpec spec{QuantFormat::kInt8, act == QMatmulActivation::kInt8Row ? 0 : kActBlock, true};
  return dequantize_with(spec, quantize_with(spec, x.data(), DType::kF32, M, K, CpuIsa::kRef), M, K, CpuIsa::kRef);
}

}  // namespace

TEST(Qmatmul, NonFiniteActivationRowsGiveAllNaNRowsOnEveryPath) {
  // The int8 modes coded a NaN row into finite garbage (the float mode gave NaN). Rows 0
  // (NaN) and 1 (+Inf) must come out all NaN; the finite rows must not be disturbed.
  const Case cases[] = {{QuantFormat::kInt4, 32, true},   {QuantFormat::kInt8, 0, true}, {QuantFormat::kNF4, 64, true},
                        {QuantFormat::kTernary, 0, true}, {QuantFormat::kQ4_0, 0, true}, {QuantFormat::kQ6_K, 0, true}};
  const int64_t N = 24, K = 256;
  for (const Case& c : cases) {
    const QuantSpec spec{c.format, c.group_size, c.symmetric};
    const std::vector<float> w = randn(N * K, 11, 0.05f);
    const Quantized q = quantize_with(spec, w.data(), DType::kF32, N, K, CpuIsa::kRef);
    const std::vector<float> w_hat = dequantize_with(spec, q, N, K, CpuIsa::kRef);
    const PackedWeight p = pack_weight(spec, q.storage(), N, K);
    for (const int64_t M : {3, 70}) {  // 70: oneDNN (int8_row) and dequantize + GEMM (float) paths
      std::vector<float> x = randn(M * K, 17);
      std::vector<float> clean = x;
      clean[5] = clean[K] = 0.0f;
      x[5] = kNaN;
      x[K] = kInf;
      for (QMatmulActivation act : {QMatmulActivation::kFloat, QMatmulActivation::kInt8, QMatmulActivation::kInt8Row}) {
        const Product want = reference_product(w_hat, int8_rounded(clean, M, K, act), M, N, K);
        for (CpuIsa isa : available_cpu_isas()) {
          SCOPED_TRACE(case_name(c) + " M=" + std::to_string(M) + " act=" + std::to_string(int(act)) + " " +
                       cpu_isa_name(isa));
          std::vector<float> y(size_t(M * N), 0.0f);
          qmatmul(p, x.data(), DType::kF32, M, nullptr, y.data(), DType::kF32, act, isa);
          EXPECT_TRUE(all_nan(y.data(), 2 * N));
          expect_rows_close(y, want, 2 * N, M * N);
        }
      }
    }
  }
}

TEST(Spmm, NonFiniteActivationRowsGiveAllNaNRows) {
  // A sparse row met a NaN only where a kept weight sits in its column, and the int8 mode not
  // at all: rows of y stayed finite. Column 1 holds no weight here, so x[0, 1] = NaN
  // reaches no product, and row 0 must still come out NaN.
  const int64_t N = 8, K = 64;
  std::vector<float> dense(size_t(N * K), 0.0f);
  std::vector<int64_t> row_ptr{0};
  std::vector<int32_t> cols;
  std::vector<float> vals;
  const std::vector<float> r = randn(N * K, 23);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 4; k < K; k += 3) {
      dense[size_t(n * K + k)] = r[size_t(n * K + k)];
      cols.push_back(int32_t(k));
      vals.push_back(r[size_t(n * K + k)]);
    }
    row_ptr.push_back(int64_t(cols.size()));
  }
  CsrWeight csr;
  csr.N = N;
  csr.K = K;
  csr.row_ptr = row_ptr.data();
  csr.cols = cols.data();
  csr.values = vals.data();
  validate_csr(csr);
  // 2:4 with int8 values: the kept weights of each group of 4 are elements 2 and 3.
  std::vector<int8_t> codes(size_t(N * K / 2));
  std::vector<float> scales(size_t(N), 0.01f), nm_dense(size_t(N * K), 0.0f);
  std::vector<uint8_t> idx(size_t(N * K / 2 * 2 / 8));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < K / 2; ++j) {
      codes[size_t(n * K / 2 + j)] = int8_t((n * 7 + j * 3) % 41 - 20);
      const int64_t col = 4 * (j / 2) + 2 + j % 2;
      nm_dense[size_t(n * K + col)] = 0.01f * codes[size_t(n * K / 2 + j)];
      idx[size_t((n * K / 2 + j) / 4)] |= uint8_t((2 + j % 2) << (2 * (j % 4)));
    }
  const NMSparseWeight nm =
      make_nm_weight(N, K, 2, 4, SparseValueType::kInt8, codes.data(), scales.data(), nullptr, 0, idx.data());
  for (const int64_t M : {3, 9}) {  // 9: the transposed many-rows path
    std::vector<float> x = randn(M * K, 29), clean = x;
    clean[1] = clean[K + 2] = 0.0f;
    x[1] = kNaN;
    x[K + 2] = -kInf;
    for (CpuIsa isa : available_cpu_isas()) {
      SCOPED_TRACE("M=" + std::to_string(M) + " " + cpu_isa_name(isa));
      std::vector<float> y(size_t(M * N));
      spmm_csr(csr, x.data(), M, nullptr, y.data(), isa);
      EXPECT_TRUE(all_nan(y.data(), 2 * N));
      expect_rows_close(y, reference_product(dense, clean, M, N, K), 2 * N, M * N);
      for (SpmmActivation act : {SpmmActivation::kFloat, SpmmActivation::kInt8}) {
        spmm_nm(nm, x.data(), M, nullptr, y.data(), isa, act);
        EXPECT_TRUE(all_nan(y.data(), 2 * N));
        const QMatmulActivation qa =
            act == SpmmActivation::kInt8 ? QMatmulActivation::kInt8 : QMatmulActivation::kFloat;
        expect_rows_close(y, reference_product(nm_dense, int8_rounded(clean, M, K, qa), M, N, K), 2 * N, M * N);
      }
    }
  }
}

TEST(KdLoss, NaNInARowGivesNaNLossAndGradientOnEveryIsa) {
  // A NaN top-k log-probability gave loss 0.0 with NaN gradients; the scalar kernels turned
  // NaN logits into 1e30 or 0. Rows 1 (NaN student logit), 2 (+Inf student logit) and 3
  // (NaN teacher; NaN top-k log-probability) must be NaN throughout, rows 0 and 4 must match
  // the oracle.
  const int64_t rows = 5, V = 50, k = 4;
  std::vector<float> z = randn(rows * V, 31, 2.0f), t = randn(rows * V, 37, 2.0f);
  z[size_t(V + 7)] = kNaN;
  z[size_t(2 * V + 1)] = kInf;
  t[size_t(3 * V + 9)] = kNaN;
  std::vector<int64_t> ids(size_t(rows * k));
  std::vector<float> lp(size_t(rows * k), std::log(0.1f));
  for (int64_t i = 0; i < rows * k; ++i) ids[size_t(i)] = (i * 7) % V;
  lp[size_t(3 * k + 2)] = kNaN;
  for (Divergence div : {Divergence::kForwardKl, Divergence::kReverseKl, Divergence::kJsd}) {
    KdOptions o;
    o.divergence = div;
    o.temperature = 1.5f;
    KdTeacher dense;
    dense.logits = t.data();
    dense.vocab = V;
    KdTeacher topk;
    topk.topk_ids = ids.data();
    topk.topk_logprobs = lp.data();
    topk.k = k;
    for (const KdTeacher* teacher : {&dense, &topk}) {
      std::vector<float> want_loss(rows), want_grad(size_t(rows * V));
      ref::kd_loss_fwd_bwd(o, z.data(), rows, V, *teacher, nullptr, 1.0f, want_loss.data(), want_grad.data());
      for (CpuIsa isa : available_cpu_isas()) {
        SCOPED_TRACE(std::to_string(int(div)) + (teacher == &topk ? " top-k " : " dense ") + cpu_isa_name(isa));
        std::vector<float> loss(rows), grad(size_t(rows * V));
        kd_loss_fwd_bwd(o, z.data(), DType::kF32, rows, V, *teacher, nullptr, 1.0f, loss.data(), grad.data(), isa);
        for (int64_t r : {1, 2, 3}) {
          EXPECT_TRUE(std::isnan(loss[size_t(r)])) << "row " << r;
          EXPECT_TRUE(std::isnan(want_loss[size_t(r)])) << "oracle row " << r;
          EXPECT_TRUE(all_nan(grad.data() + r * V, V)) << "row " << r;
        }
        for (int64_t r : {0, 4}) {  // the tolerances of test_kd_loss.cpp
          ASSERT_NEAR(loss[size_t(r)], want_loss[size_t(r)], 2e-5 + 2e-5 * std::fabs(want_loss[size_t(r)]));
          for (int64_t j = r * V; j < (r + 1) * V; ++j)
            ASSERT_NEAR(grad[size_t(j)], want_grad[size_t(j)], 1e-6 + 1e-4 * std::fabs(want_grad[size_t(j)]));
        }
      }
    }
  }
}

TEST(FusedKdChunkRows, RejectsAnEmptyVocabularyInsteadOfLoopingForever) {
  // c * 2 * vocab <= 2^24 never failed for vocab <= 0: the doubling overflowed and looped.
  EXPECT_THROW(fused_kd_chunk_rows(5, 0), std::invalid_argument);
  EXPECT_THROW(fused_kd_chunk_rows(-1, 10), std::invalid_argument);
  EXPECT_EQ(fused_kd_chunk_rows(1000, int64_t(1) << 40), 16);
  EXPECT_EQ(fused_kd_chunk_rows(1 << 20, 32000), 512);  // 512 * 32000 <= 2^24 < 1024 * 32000
}

TEST(SpmmCsr, RowPointersAreCheckedBeforeAnyColumnIsRead) {
  // row_ptr [0, 100, 5] with 5 nonzeros: the column check of row 0 read 95 entries past the
  // buffers (heap-buffer-overflow under ASan) before row 1 revealed the decrease.
  const std::vector<int64_t> row_ptr{0, 100, 5};
  const std::vector<int16_t> cols{0, 1, 2, 3, 4};
  const std::vector<float> vals(5, 1.0f);
  CsrWeight w;
  w.N = 2;
  w.K = 8;
  w.row_ptr = row_ptr.data();
  w.cols = cols.data();
  w.cols16 = true;
  w.values = vals.data();
  const std::string msg = invalid_message([&] { validate_csr(w); });
  EXPECT_NE(msg.find("row_ptr must not decrease"), std::string::npos) << msg;
}

TEST(SpmmNM, LayoutRejectsNegativeGroupsAndSizesPastInt64) {
  // A group of -16 passed the "multiple of 16" check and gave negative buffer sizes.
  EXPECT_NE(invalid_message([] { nm_layout(2, 64, 2, 4, SparseValueType::kInt8, -16); }).find("group"),
            std::string::npos);
  EXPECT_NE(invalid_message([] {
              nm_layout(int64_t(1) << 40, int64_t(1) << 40, 2, 4, SparseValueType::kF32, 0);
            }).find("overflows"),
            std::string::npos);
  const NMSparseWeight w = nm_layout(3, 64, 2, 4, SparseValueType::kInt4, 16);
  EXPECT_EQ(w.groups(), 2);
  EXPECT_EQ(w.int4_row_bytes(), 16);
}
