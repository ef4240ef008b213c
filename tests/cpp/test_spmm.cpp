// spmm on every ISA against a float64 product with the dense weight the test itself
// builds: random kept positions and values (or int8/int4 codes and scales), encoded here
// into the documented layout, independently of the library.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "slmops/cpu_features.h"
#include "slmops/spmm.h"

using namespace slmops;

namespace {

std::vector<CpuIsa> isas() { return available_cpu_isas(); }

// An n:m weight: dense float reference plus its encoded buffers.
struct NMCase {
  std::vector<float> dense, values_f32, scales;
  std::vector<int8_t> codes8;
  std::vector<uint8_t> codes4, indices;
  std::vector<int64_t> cols;  // column of each kept value
  int64_t group = 0;
};

NMCase make_nm(int64_t N, int64_t K, int n, int m, SparseValueType type, int64_t group, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t kept = K / m * n, bits = m == 4 ? 2 : 3;
  const int64_t groups = group ? (kept + group - 1) / group : 1, row4 = groups * group / 2;
  NMCase c;
  c.group = group;
  c.dense.assign(size_t(N * K), 0.0f);
  c.indices.assign(size_t(N * ((kept * bits + 7) / 8)), 0);
  c.values_f32.resize(size_t(N * kept));
  c.cols.resize(size_t(N * kept));
  c.codes8.resize(size_t(N * kept));
  c.codes4.assign(size_t(N * row4), 0);
  c.scales.resize(size_t(N * groups));
  for (auto& s : c.scales) s = 0.01f + 0.1f * std::abs(nd(rng));
  for (int64_t r = 0; r < N; ++r)
    for (int64_t g = 0; g < K / m; ++g) {
      std::vector<int> pos(static_cast<size_t>(m));
      for (int i = 0; i < m; ++i) pos[size_t(i)] = i;
      std::shuffle(pos.begin(), pos.end(), rng);
      std::sort(pos.begin(), pos.begin() + n);
      for (int i = 0; i < n; ++i) {
        const int64_t j = g * n + i, col = g * m + pos[size_t(i)];
        const float s = type == SparseValueType::kInt8 || type == SparseValueType::kInt4
                            ? c.scales[size_t(r * groups + (group ? j / group : 0))]
                            : 1.0f;
        float w = nd(rng);
        if (type == SparseValueType::kInt8) {
          const int q = int(rng() % 255) - 127;
          c.codes8[size_t(r * kept + j)] = int8_t(q);
          w = s * float(q);
        } else if (type == SparseValueType::kInt4) {
          const int q = int(rng() % 16);  // symmetric: zero point 8
          c.codes4[size_t(r * row4 + j / 2)] |= uint8_t(q << (4 * (j & 1)));
          w = s * float(q - 8);
        } else if (type == SparseValueType::kBF16) {
          uint32_t u;  // keep the top 16 bits: exact in bf16
          std::memcpy(&u, &w, 4);
          u &= 0xFFFF0000u;
          std::memcpy(&w, &u, 4);
        }
        c.values_f32[size_t(r * kept + j)] = w;
        c.cols[size_t(r * kept + j)] = col;
        c.dense[size_t(r * K + col)] = w;
        const int64_t bit = j * bits;
        for (int64_t b = 0; b < bits; ++b)
          if ((pos[size_t(i)] >> b) & 1)
            c.indices[size_t(r * ((kept * bits + 7) / 8) + (bit + b) / 8)] |= uint8_t(1 << ((bit + b) % 8));
      }
    }
  return c;
}

std::vector<uint16_t> bf16_bits(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &v[i], 4);
    out[i] = uint16_t(u >> 16);  // exact: the test's values have zero low halves
  }
  return out;
}

void expect_product(const std::vector<float>& dense, const std::vector<float>& x, const std::vector<float>& bias,
                    const std::vector<float>& y, int64_t M, int64_t N, int64_t K, const std::string& what) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t r = 0; r < N; ++r) {
      double ref = bias[size_t(r)], mag = std::abs(bias[size_t(r)]);
      for (int64_t k = 0; k < K; ++k) {
        ref += double(x[size_t(m * K + k)]) * dense[size_t(r * K + k)];
        mag += std::abs(double(x[size_t(m * K + k)]) * dense[size_t(r * K + k)]);
      }
      ASSERT_NEAR(y[size_t(m * N + r)], ref, 1e-5 * mag + 1e-6) << what << " m=" << m << " n=" << r;
    }
}

std::vector<float> randn(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& e : v) e = nd(rng);
  return v;
}

using NMParam = std::tuple<int, SparseValueType>;
class SpmmNM : public ::testing::TestWithParam<NMParam> {};

TEST_P(SpmmNM, MatchesDenseProductOnEveryIsaAndShape) {
  const auto [m, type] = GetParam();
  const int n = m / 2;
  const bool quantized = type == SparseValueType::kInt8 || type == SparseValueType::kInt4;
  // Tails: kept values not a multiple of 16, rows not a multiple of the row blocks; M on both
  // sides of the many-rows threshold and over one 128-row slice, and a K spanning several
  // column blocks and decode ranges.
  for (const auto& [N, K] : std::vector<std::pair<int64_t, int64_t>>{{3, 8 * m}, {17, 40 * m}, {66, 136 * m}}) {
    const int64_t kept = K / m * n, group = quantized ? 16 : 0;
    const NMCase c = make_nm(N, K, n, m, type, group, unsigned(N * 7 + K));
    const auto bf16 = bf16_bits(c.values_f32);
    const void* values = type == SparseValueType::kF32    ? static_cast<const void*>(c.values_f32.data())
                         : type == SparseValueType::kBF16 ? static_cast<const void*>(bf16.data())
                         : type == SparseValueType::kInt8 ? static_cast<const void*>(c.codes8.data())
                                                          : static_cast<const void*>(c.codes4.data());
    const NMSparseWeight w = make_nm_weight(N, K, n, m, type, values, quantized ? c.scales.data() : nullptr, nullptr,
                                            group, c.indices.data());
    ASSERT_EQ(w.kept(), kept);
    for (int64_t M : {int64_t(1), int64_t(5), kSpmmGemmRows, int64_t(37), int64_t(150)}) {
      const auto x = randn(size_t(M * K), unsigned(M + K)), bias = randn(size_t(N), 3);
      for (CpuIsa isa : isas()) {
        std::vector<float> y(size_t(M * N), -1.0f);
        spmm_nm(w, x.data(), M, bias.data(), y.data(), isa);
        expect_product(c.dense, x, bias, y, M, N, K,
                       std::string(cpu_isa_name(isa)) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                           " M=" + std::to_string(M));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Patterns, SpmmNM,
                         ::testing::Combine(::testing::Values(4, 8),
                                            ::testing::Values(SparseValueType::kF32, SparseValueType::kBF16,
                                                              SparseValueType::kInt8, SparseValueType::kInt4)));

TEST(SpmmNM, Int4ZeroPointsGiveOffsets) {
  const int64_t N = 2, K = 64, kept = 32, group = 16;
  const NMCase c = make_nm(N, K, 2, 4, SparseValueType::kInt4, group, 1);
  const std::vector<uint8_t> zp(size_t(N), 0x53);  // groups 0 and 1: zero points 3 and 5
  const NMSparseWeight w = make_nm_weight(N, K, 2, 4, SparseValueType::kInt4, c.codes4.data(), c.scales.data(),
                                          zp.data(), group, c.indices.data());
  std::vector<float> dense(size_t(N * K), 0.0f);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t j = 0; j < kept; ++j) {
      const int q = (c.codes4[size_t(r * 16 + j / 2)] >> (4 * (j & 1))) & 0xF;
      dense[size_t(r * K + c.cols[size_t(r * kept + j)])] =
          c.scales[size_t(r * 2 + j / 16)] * float(q - (j < 16 ? 3 : 5));
    }
  const auto x = randn(size_t(K), 5);
  const std::vector<float> zero_bias(size_t(N), 0.0f);
  for (CpuIsa isa : isas()) {
    std::vector<float> y(static_cast<size_t>(N));
    spmm_nm(w, x.data(), 1, nullptr, y.data(), isa);
    expect_product(dense, x, zero_bias, y, 1, N, K, cpu_isa_name(isa));
  }
}

// x quantized as the int8 activation mode specifies it (the int8 format, group 32), written
// out here: scale absmax / 127, codes x * (1 / scale) rounded half to even.
std::vector<float> int8_blocks_dequantized(const std::vector<float>& x, int64_t M, int64_t K) {
  std::vector<float> out(x.size());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < K; b += 32) {
      const int64_t e = std::min(K, b + 32);
      float amax = 0.0f;
      for (int64_t k = b; k < e; ++k) amax = std::max(amax, std::abs(x[size_t(m * K + k)]));
      const float s = amax / 127.0f;
      for (int64_t k = b; k < e; ++k)
        out[size_t(m * K + k)] = s > 0 ? s * std::nearbyint(x[size_t(m * K + k)] * (1.0f / s)) : 0.0f;
    }
  return out;
}

// int8 activations: y = W x^ on every ISA, for the integer kernel's cases (2:4 int4, groups
// of 16, 32, 64, 128 and the whole row, kept values beyond the last 64-value step, zero
// points; one activation row, four weight rows interleaved, and blocks of four activation
// rows) and for the fallbacks (int8 values, 4:8, more rows than the integer kernel takes).
TEST(SpmmNM, Int8ActivationsMultiplyTheDequantizedActivations) {
  struct Case {
    int m;
    SparseValueType type;
    int64_t K, group;
    bool zero_points;
  };
  const Case cases[] = {{4, SparseValueType::kInt4, 1024, 32, false},
                        {4, SparseValueType::kInt4, 544, 16, true},
                        {4, SparseValueType::kInt4, 1280, 64, true},
                        {4, SparseValueType::kInt4, 2048, 128, false},
                        {4, SparseValueType::kInt4, 768, 384, true},
                        {4, SparseValueType::kInt4, 480, 48, false},
                        {4, SparseValueType::kInt8, 1024, 32, false},
                        {8, SparseValueType::kInt4, 1024, 32, true},
                        // SmolLM2's hidden size: the integer kernel's last step is half full
                        {4, SparseValueType::kInt4, 576, 32, false},
                        {4, SparseValueType::kInt4, 576, 32, true}};
  for (const Case& t : cases) {
    const int64_t N = 19, n = t.m / 2, kept = t.K / t.m * n, groups = kept / t.group;
    const NMCase c = make_nm(N, t.K, n, t.m, t.type, t.group, unsigned(t.K + t.group));
    std::vector<uint8_t> zp(size_t(N * ((groups + 1) / 2)));
    for (size_t i = 0; i < zp.size(); ++i) zp[i] = uint8_t((i * 7 + 3) % 256);
    const bool with_zp = t.type == SparseValueType::kInt4 && t.zero_points;
    const void* values = t.type == SparseValueType::kInt8 ? static_cast<const void*>(c.codes8.data())
                                                          : static_cast<const void*>(c.codes4.data());
    const NMSparseWeight w = make_nm_weight(N, t.K, n, t.m, t.type, values, c.scales.data(),
                                            with_zp ? zp.data() : nullptr, t.group, c.indices.data());
    std::vector<float> dense(size_t(N * t.K), 0.0f);  // the weights with their zero points
    for (int64_t r = 0; r < N; ++r)
      for (int64_t j = 0; j < kept; ++j) {
        const int64_t g = j / t.group;
        const int zero = with_zp ? (zp[size_t(r * ((groups + 1) / 2) + g / 2)] >> (4 * (g & 1))) & 0xF : 8;
        const float s = c.scales[size_t(r * groups + g)];
        const float v = t.type == SparseValueType::kInt8
                            ? s * float(c.codes8[size_t(r * kept + j)])
                            : s * float(((c.codes4[size_t(r * (kept / 2) + j / 2)] >> (4 * (j & 1))) & 0xF) - zero);
        dense[size_t(r * t.K + c.cols[size_t(r * kept + j)])] = v;
      }
    for (int64_t M : {int64_t(1), int64_t(3), int64_t(5), int64_t(12), kSpmmInt8GemmRows + 6}) {
      const auto x = randn(size_t(M * t.K), unsigned(M * 31 + t.K)), bias = randn(size_t(N), 6);
      const auto xhat = int8_blocks_dequantized(x, M, t.K);
      for (CpuIsa isa : isas()) {
        std::vector<float> y(size_t(M * N), -1.0f);
        spmm_nm(w, x.data(), M, bias.data(), y.data(), isa, SpmmActivation::kInt8);
        expect_product(dense, xhat, bias, y, M, N, t.K,
                       std::string(cpu_isa_name(isa)) + " " + std::to_string(n) + ":" + std::to_string(t.m) + " K=" +
                           std::to_string(t.K) + " group=" + std::to_string(t.group) + " M=" + std::to_string(M));
      }
    }
  }
  std::vector<float> v(64), x(64), y(2);
  std::vector<uint8_t> idx(64);
  const NMSparseWeight f32 =
      make_nm_weight(2, 64, 2, 4, SparseValueType::kF32, v.data(), nullptr, nullptr, 0, idx.data());
  EXPECT_THROW(spmm_nm(f32, x.data(), 1, nullptr, y.data(), CpuIsa::kAuto, SpmmActivation::kInt8),
               std::invalid_argument);  // float values take float activations
}

TEST(SpmmNM, RejectsBadLayouts) {
  std::vector<float> v(64);
  std::vector<uint8_t> idx(64);
  EXPECT_THROW(make_nm_weight(2, 16, 2, 8, SparseValueType::kF32, v.data(), nullptr, nullptr, 0, idx.data()),
               std::invalid_argument);  // 2:8 is not a supported pattern
  EXPECT_THROW(make_nm_weight(2, 18, 2, 4, SparseValueType::kF32, v.data(), nullptr, nullptr, 0, idx.data()),
               std::invalid_argument);  // K not a multiple of 4
  EXPECT_THROW(make_nm_weight(0, 16, 2, 4, SparseValueType::kF32, v.data(), nullptr, nullptr, 0, idx.data()),
               std::invalid_argument);  // empty
  EXPECT_THROW(make_nm_weight(2, 128, 2, 4, SparseValueType::kInt8, v.data(), nullptr, nullptr, 16, idx.data()),
               std::invalid_argument);  // no scales
  std::vector<float> scales(64);
  EXPECT_THROW(make_nm_weight(2, 128, 2, 4, SparseValueType::kInt8, v.data(), scales.data(), nullptr, 24, idx.data()),
               std::invalid_argument);  // group not a multiple of 16
}

class SpmmCsr : public ::testing::TestWithParam<bool> {};

TEST_P(SpmmCsr, MatchesDenseProductWithEmptyRows) {
  const bool cols16 = GetParam();
  const int64_t N = 37, K = 700;  // K: several column blocks and two decode ranges
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> dense(size_t(N * K), 0.0f), values;
  std::vector<int64_t> row_ptr{0};
  std::vector<int16_t> c16;
  std::vector<int32_t> c32;
  for (int64_t r = 0; r < N; ++r) {
    const float density = r % 5 == 0 ? 0.0f : r % 5 == 1 ? 0.9f : 0.1f;  // all-zero rows too
    for (int64_t k = 0; k < K; ++k)
      if (u(rng) < density) {
        const float v = u(rng) - 0.5f;
        dense[size_t(r * K + k)] = v;
        values.push_back(v);
        c16.push_back(int16_t(k));
        c32.push_back(int32_t(k));
      }
    row_ptr.push_back(int64_t(values.size()));
  }
  CsrWeight w;
  w.N = N;
  w.K = K;
  w.row_ptr = row_ptr.data();
  w.cols16 = cols16;
  w.cols = cols16 ? static_cast<const void*>(c16.data()) : static_cast<const void*>(c32.data());
  w.values = values.data();
  validate_csr(w);
  for (int64_t M : {int64_t(1), int64_t(3), int64_t(20), int64_t(150)}) {
    const auto x = randn(size_t(M * K), unsigned(M)), bias = randn(size_t(N), 4);
    for (CpuIsa isa : isas()) {
      std::vector<float> y(size_t(M * N), -1.0f);
      spmm_csr(w, x.data(), M, bias.data(), y.data(), isa);
      expect_product(dense, x, bias, y, M, N, K, std::string(cpu_isa_name(isa)) + " M=" + std::to_string(M));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(ColumnTypes, SpmmCsr, ::testing::Values(true, false));

TEST(SpmmCsr, ValidationNamesTheBadRow) {
  std::vector<int64_t> row_ptr{0, 2, 4};
  std::vector<int32_t> cols{1, 3, 5, 2};  // row 1 not increasing
  std::vector<float> values(4, 1.0f);
  CsrWeight w;
  w.N = 2;
  w.K = 8;
  w.row_ptr = row_ptr.data();
  w.cols = cols.data();
  w.values = values.data();
  try {
    validate_csr(w);
    FAIL() << "unsorted columns accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("row 1"), std::string::npos) << e.what();
  }
  cols = {1, 3, 5, 9};  // out of range
  EXPECT_THROW(validate_csr(w), std::invalid_argument);
}

}  // namespace
