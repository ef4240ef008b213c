// Every quantization kernel on every ISA this machine has, against the ref kernels:
// codes, scales and dequantized values must match bit for bit, on tail shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/half.h"
#include "quant_cases.h"
#include "slmops/quant.h"

using namespace slmops;
using namespace slmops::test_cases;

namespace {

Quantized run_quantize(const Case& c, const std::vector<float>& w, int64_t rows, int64_t K, CpuIsa isa,
                       DType dtype = DType::kF32, const void* src = nullptr) {
  return quantize_with({c.format, c.group_size, c.symmetric}, src ? src : w.data(), dtype, rows, K, isa);
}

std::vector<float> run_dequantize(const Case& c, const Quantized& q, int64_t rows, int64_t K, CpuIsa isa) {
  return dequantize_with({c.format, c.group_size, c.symmetric}, q, rows, K, isa);
}

// An empty vector's data() may be null, and memcmp's pointers must not be, even for 0 bytes
// (UBSan: nonnull-attribute): the GGUF formats have no float scales.
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
}

}  // namespace

class QuantIsaTest : public ::testing::TestWithParam<Case> {};

TEST_P(QuantIsaTest, MatchesRefBitForBit) {
  const Case c = GetParam();
  for (CpuIsa isa : available_cpu_isas()) {
    for (int64_t K : k_values(c)) {
      for (int64_t rows : {1, 5}) {
        SCOPED_TRACE(std::string(cpu_isa_name(isa)) + " rows=" + std::to_string(rows) + " K=" + std::to_string(K));
        const auto w = make_weights(rows, K, unsigned(K * 31 + rows));
        const Quantized ref = run_quantize(c, w, rows, K, CpuIsa::kRef);
        const Quantized got = run_quantize(c, w, rows, K, isa);
        EXPECT_EQ(got.data, ref.data);
        EXPECT_TRUE(same_bits(got.scales, ref.scales));
        EXPECT_EQ(got.zero_points, ref.zero_points);
        const auto dref = run_dequantize(c, ref, rows, K, CpuIsa::kRef);
        EXPECT_TRUE(same_bits(run_dequantize(c, ref, rows, K, isa), dref));
        for (float v : dref) ASSERT_TRUE(std::isfinite(v));
      }
    }
  }
}

TEST_P(QuantIsaTest, HalfInputsMatchTheirFloatValues) {
  // Quantizing fp16/bf16 weights must equal quantizing the same values given as fp32.
  const Case c = GetParam();
  const int64_t rows = 3, K = k_values(c)[1];
  auto w = make_weights(rows, K, 7);
  std::vector<uint16_t> h(w.size()), bf(w.size());
  std::vector<float> wh(w.size()), wbf(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    h[i] = f32_to_f16(w[i]);
    wh[i] = f16_to_f32(h[i]);
    bf[i] = f32_to_bf16(w[i]);
    wbf[i] = bf16_to_f32(bf[i]);
  }
  for (CpuIsa isa : available_cpu_isas()) {
    SCOPED_TRACE(cpu_isa_name(isa));
    EXPECT_EQ(run_quantize(c, wh, rows, K, isa, DType::kF16, h.data()).data,
              run_quantize(c, wh, rows, K, CpuIsa::kRef).data);
    EXPECT_EQ(run_quantize(c, wbf, rows, K, isa, DType::kBF16, bf.data()).data,
              run_quantize(c, wbf, rows, K, CpuIsa::kRef).data);
  }
}

TEST_P(QuantIsaTest, RoundTripErrorIsBounded) {
  // A loose sanity bound per element: |w - dq(q(w))| <= step of the group. The precise
  // budgets per format live in the Python tests; this catches gross layout bugs per ISA.
  const Case c = GetParam();
  const int64_t rows = 4, K = k_values(c).back();
  const auto w = make_weights(rows, K, 3);
  for (CpuIsa isa : available_cpu_isas()) {
    const auto dq = run_dequantize(c, run_quantize(c, w, rows, K, isa), rows, K, isa);
    double err = 0, norm = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      err += double(w[i] - dq[i]) * (w[i] - dq[i]);
      norm += double(w[i]) * w[i];
    }
    // Normalized MSE; ternary is a lossy projection of non-ternary data, so only a
    // bound that catches wrong packing applies to it.
    const double budget = c.format == QuantFormat::kTernary || c.format == QuantFormat::kTQ2_0 ? 1.0 : 0.05;
    EXPECT_LT(err / norm, budget) << cpu_isa_name(isa);
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, QuantIsaTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return case_name(info.param); });

TEST(QuantLayout, RejectsBadSpecsWithReasons) {
  EXPECT_THROW(quant_layout({QuantFormat::kQ4_0, 0, true}, 33), std::invalid_argument);
  EXPECT_THROW(quant_layout({QuantFormat::kQ4_K, 0, true}, 128), std::invalid_argument);
  EXPECT_THROW(quant_layout({QuantFormat::kInt4, 48, true}, 128), std::invalid_argument);
  EXPECT_THROW(quant_layout({QuantFormat::kInt4, 8, true}, 128), std::invalid_argument);
  EXPECT_THROW(quant_layout({QuantFormat::kNF4, 64, true}, 100), std::invalid_argument);
  EXPECT_THROW(quant_layout({QuantFormat::kQ8_0, 0, false}, 64), std::invalid_argument);
  EXPECT_THROW(quant_layout({QuantFormat::kQ8_0, 64, true}, 64), std::invalid_argument);
  EXPECT_THROW(quant_layout({QuantFormat::kInt8, 0, true}, 0), std::invalid_argument);
  try {
    quant_layout({QuantFormat::kQ4_K, 0, true}, 896);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 256"), std::string::npos) << e.what();
  }
  EXPECT_THROW(quant_format_from_name("int3"), std::invalid_argument);
}

TEST(QuantLayout, SizesMatchTheFormats) {
  // MatMulNBits: B [N, ceil(K/block), block/2], zero points [N, ceil(k_blocks/2)].
  auto L = quant_layout({QuantFormat::kInt4, 32, false}, 100);
  EXPECT_EQ(L.groups_per_row, 4);
  EXPECT_EQ(L.data_bytes_per_row, 64);
  EXPECT_EQ(L.zero_point_bytes_per_row, 2);
  EXPECT_EQ(quant_layout({QuantFormat::kQ4_0, 0, true}, 64).data_bytes_per_row, 36);
  EXPECT_EQ(quant_layout({QuantFormat::kQ6_K, 0, true}, 512).data_bytes_per_row, 420);
  EXPECT_EQ(quant_layout({QuantFormat::kTernary, 0, true}, 9).data_bytes_per_row, 3);
}

TEST(HalfConversion, MatchesIeeeOnEveryF16Value) {
  // f16 -> f32 -> f16 must be the identity on every non-NaN half.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
    ASSERT_EQ(f32_to_f16(f16_to_f32(uint16_t(h))), h) << h;
  }
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);          // rounds to +inf
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);          // max half
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0);  // tie at half the smallest subnormal -> even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 1);
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);  // tie -> even
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3f82);  // tie -> even (up)
}

TEST(DoubleQuant, ReconstructsScalesClosely) {
  std::vector<float> a(1000);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 0.01f + 0.001f * float(i % 97);
  std::vector<int8_t> codes(a.size());
  std::vector<float> bs((a.size() + kNF4DoubleQuantBlock - 1) / kNF4DoubleQuantBlock), back(a.size());
  float off;
  double_quantize_scales(a.data(), int64_t(a.size()), codes.data(), bs.data(), &off);
  double_dequantize_scales(codes.data(), bs.data(), off, int64_t(a.size()), back.data());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(back[i], a[i], 0.5f * bs[i / kNF4DoubleQuantBlock] + 1e-7f);
}
