// qmatmul on every ISA against a float64 product of the ref-dequantized weight with the
// activations (for int8 activations: with the ref int8-quantized, dequantized ones).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "quant_cases.h"
#include "slmops/build_info.h"
#include "slmops/qmatmul.h"
#include "slmops/quant.h"

using namespace slmops;
using namespace slmops::test_cases;

namespace {

Quantized quantize_ref(const QuantSpec& spec, const std::vector<float>& w, int64_t N, int64_t K) {
  return quantize_with(spec, w.data(), DType::kF32, N, K, CpuIsa::kRef);
}

std::vector<float> dequantize_ref(const QuantSpec& spec, const Quantized& q, int64_t N, int64_t K) {
  return dequantize_with(spec, q, N, K, CpuIsa::kRef);
}

// The int8 activations the kernels use: int8 format, groups of kActBlock (or one scale per
// row for kInt8Row), dequantized.
std::vector<float> int8_activations(const std::vector<float>& x, int64_t M, int64_t K, QMatmulActivation act) {
  const QuantSpec spec{QuantFormat::kInt8, act == QMatmulActivation::kInt8Row ? 0 : kActBlock, true};
  return dequantize_ref(spec, quantize_ref(spec, x, M, K), M, K);
}

void check(const Case& c, int64_t M, int64_t N, int64_t K, QMatmulActivation act, CpuIsa isa,
           QMatmulBackend backend = QMatmulBackend::kAuto) {
  const QuantSpec spec{c.format, c.group_size, c.symmetric};
  const auto w = make_weights(N, K, unsigned(N * 131 + K));
  std::mt19937 rng(unsigned(M * 7 + K));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(M * K)), bias(static_cast<size_t>(N));
  for (auto& v : x) v = nd(rng);
  for (auto& v : bias) v = nd(rng);
  const Quantized q = quantize_ref(spec, w, N, K);
  auto wd = dequantize_ref(spec, q, N, K);
  if (c.format == QuantFormat::kNF4 && act != QMatmulActivation::kFloat) {
    // With int8 activations nf4 multiplies the int8-rounded codebook, round(127 * code):
    // w = absmax / 127 * round(127 * code) (see PackedWeight::panel_table).
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const int code = (q.data[size_t(n * K / 2 + k / 2)] >> ((k & 1) ? 0 : 4)) & 0xF;
        wd[size_t(n * K + k)] = q.scales[size_t(n * (K / c.group_size) + k / c.group_size)] / 127.0f *
                                std::nearbyint(127.0f * kNF4Codebook[code]);
      }
  }
  const auto xe = act == QMatmulActivation::kFloat ? x : int8_activations(x, M, K, act);

  const PackedWeight packed = pack_weight(spec, q.storage(), N, K);
  std::vector<float> y(size_t(M * N), NAN);
  qmatmul(packed, x.data(), DType::kF32, M, bias.data(), y.data(), DType::kF32, act, isa, backend);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = bias[size_t(n)], xabs = 0.0, wmax = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        ref += double(xe[size_t(m * K + k)]) * wd[size_t(n * K + k)];
        xabs += std::fabs(double(xe[size_t(m * K + k)]));
        wmax = std::max(wmax, std::fabs(double(wd[size_t(n * K + k)])));
      }
      // The kernels sum s*q*x and o*x (or c*x and x for ternary) separately, in fp32 over
      // K terms, so the rounding error scales with sum|x| * (|s*q| + |o|) <= 3 max|w| * sum|x|,
      // not with the (possibly much smaller) result; a few ulp of that per term.
      const double mag = 3.0 * wmax * xabs + std::fabs(bias[size_t(n)]);
      const double tol = (16.0 + 2.0 * double(K)) * std::ldexp(1.0, -24) * mag + 1e-30;
      ASSERT_NEAR(y[size_t(m * N + n)], ref, tol) << "m=" << m << " n=" << n;
    }
}

class QMatmulTest : public ::testing::TestWithParam<Case> {};

TEST_P(QMatmulTest, MatchesDequantizedProductOnEveryIsa) {
  const Case c = GetParam();
  for (CpuIsa isa : available_cpu_isas())
    for (QMatmulActivation act : {QMatmulActivation::kFloat, QMatmulActivation::kInt8, QMatmulActivation::kInt8Row})
      for (int64_t K : k_values(c))
        // M = 64 takes the dequantize-then-sgemm path for float activations.
        for (auto [M, N] : {std::pair<int64_t, int64_t>{1, 7}, {3, 5}, {6, 33}, {37, 9}, {64, 21}}) {
          SCOPED_TRACE(std::string(cpu_isa_name(isa)) + " activation " + std::to_string(int(act)) +
                       " M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
          check(c, M, N, K, act, isa);
          if (HasFatalFailure()) return;
        }
}

TEST(QMatmul, OneDnnW8A8MatchesTheKernelsAndTheReference) {
  if (!slmops::build_info().onednn) GTEST_SKIP() << "built without oneDNN";
  const Case c{QuantFormat::kInt8, 0, true};
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 7, 33}, {5, 33, 64}, {37, 70, 1000}}) {
    SCOPED_TRACE("M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
    check(c, M, N, K, QMatmulActivation::kInt8Row, CpuIsa::kAuto, QMatmulBackend::kOneDnn);
    check(c, M, N, K, QMatmulActivation::kInt8Row, CpuIsa::kAuto, QMatmulBackend::kKernels);
  }
  // oneDNN is only for per-channel int8 weights with per-token activations.
  const QuantSpec spec{QuantFormat::kInt4, 32, true};
  const auto w = make_weights(4, 64, 1);
  const Quantized q = quantize_ref(spec, w, 4, 64);
  const PackedWeight packed = pack_weight(spec, q.storage(), 4, 64);
  std::vector<float> x(64, 1.0f), y(4);
  EXPECT_THROW(qmatmul(packed, x.data(), DType::kF32, 1, nullptr, y.data(), DType::kF32, QMatmulActivation::kInt8Row,
                       CpuIsa::kAuto, QMatmulBackend::kOneDnn),
               std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(AllFormats, QMatmulTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return case_name(info.param); });

TEST(QMatmul, HalfActivationsAndOutputs) {
  const QuantSpec spec{QuantFormat::kInt4, 32, true};
  const int64_t M = 3, N = 4, K = 64;
  const auto w = make_weights(N, K, 5);
  const Quantized q = quantize_ref(spec, w, N, K);
  const PackedWeight packed = pack_weight(spec, q.storage(), N, K);
  std::vector<float> x(size_t(M * K));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i % 9) - 4) * 0.25f;  // exact in fp16 and bf16
  std::vector<uint16_t> xh(x.size()), yh(size_t(M * N));
  for (size_t i = 0; i < x.size(); ++i) xh[i] = uint16_t(0x3c00);  // overwritten below
  std::vector<float> y32(size_t(M * N)), y_from_half(size_t(M * N));
  qmatmul(packed, x.data(), DType::kF32, M, nullptr, y32.data(), DType::kF32, QMatmulActivation::kFloat);
  // bf16 of these values is their top 16 bits.
  for (size_t i = 0; i < x.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &x[i], 4);
    xh[i] = uint16_t(u >> 16);
  }
  qmatmul(packed, xh.data(), DType::kBF16, M, nullptr, y_from_half.data(), DType::kF32, QMatmulActivation::kFloat);
  EXPECT_EQ(y32, y_from_half);
  qmatmul(packed, x.data(), DType::kF32, M, nullptr, yh.data(), DType::kBF16, QMatmulActivation::kFloat);
  for (size_t i = 0; i < yh.size(); ++i) {
    uint32_t u = uint32_t(yh[i]) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    EXPECT_NEAR(f, y32[i], std::fabs(y32[i]) * 0.0079f + 1e-6f);  // bf16 keeps 8 significant bits
  }
}

}  // namespace

namespace {

// The code of element (n, k) read back from the row panels of a packed weight.
int panel_code(const PackedWeight& p, int64_t n, int64_t k) {
  constexpr int64_t R = PackedWeight::kPanelRows;
  const int64_t pi = n / R, r = n % R;
  switch (p.kind) {
    case PackedKind::kNibbleAffine:
    case PackedKind::kNibbleTable: {
      const uint8_t b = p.panel_codes[size_t(((pi * p.panel_octets + k / 8) * R + r) * 4 + (k % 8) % 4)];
      return (b >> (4 * ((k % 8) / 4))) & 0xF;
    }
    case PackedKind::kInt8: return int(p.panel_codes[size_t(((pi * p.panel_quads + k / 4) * R + r) * 4 + k % 4)]) - 128;
    case PackedKind::kTernary: {
      const uint8_t b = p.panel_codes[size_t(((pi * p.panel_hexads + k / 16) * R + r) * 4 + k % 4)];
      return (b >> (2 * ((k % 16) / 4))) & 3;
    }
    default: return -1;
  }
}

// The code of element (n, k) in the original quantized storage.
int source_code(const QuantSpec& spec, const Quantized& q, int64_t n, int64_t k, int64_t K) {
  const QuantLayout L = quant_layout(spec, K);
  const uint8_t* row = q.data.data() + n * L.data_bytes_per_row;
  switch (spec.format) {
    case QuantFormat::kInt4: return (row[k / 2] >> (4 * (k % 2))) & 0xF;
    case QuantFormat::kNF4: return (row[k / 2] >> ((k % 2) ? 0 : 4)) & 0xF;
    case QuantFormat::kInt8: return int(int8_t(row[k]));
    case QuantFormat::kTernary: return (row[k / 4] >> (2 * (k % 4))) & 3;
    case QuantFormat::kQ4_0: {
      const uint8_t* blk = row + (k / 32) * 18 + 2;
      return (blk[k % 16] >> ((k % 32) < 16 ? 0 : 4)) & 0xF;
    }
    case QuantFormat::kQ8_0: return int(int8_t(row[(k / 32) * 34 + 2 + k % 32]));
    case QuantFormat::kQ4_K: {
      const uint8_t* qs = row + (k / 256) * 144 + 16;
      const int64_t e = k % 256;
      return (qs[32 * (e / 64) + e % 32] >> ((e % 64) < 32 ? 0 : 4)) & 0xF;
    }
    default: return -1;
  }
}

}  // namespace

TEST(QMatmulPacking, PanelsHoldExactlyTheSourceCodes) {
  // Repacking is a permutation of codes: every code, every row (also a partial last panel).
  for (const Case& c : kCases) {
    if (c.format == QuantFormat::kQ6_K || c.format == QuantFormat::kTQ2_0) continue;  // not packed into panels
    const QuantSpec spec{c.format, c.group_size, c.symmetric};
    const int64_t N = 37, K = k_values(c)[1];
    const auto w = make_weights(N, K, 11);
    const Quantized q = quantize_ref(spec, w, N, K);
    const PackedWeight p = pack_weight(spec, q.storage(), N, K);
    ASSERT_FALSE(p.panel_codes.empty()) << case_name(c);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        ASSERT_EQ(panel_code(p, n, k), source_code(spec, q, n, k, K)) << case_name(c) << " n=" << n << " k=" << k;
  }
}
