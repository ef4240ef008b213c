// The CUDA kernels' element math, lane loops and row passes (the SLMOPS_HD headers in
// cpp/src/cuda/), run on the CPU against the CPU references, and the host-side kernel
// choices. These run in every build, with or without CUDA or a GPU; the kernels
// themselves are tested on a GPU in test_cuda.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cuda/dequant_element.h"
#include "cuda/kd_row.h"
#include "cuda/qgemv.h"
#include "quant_cases.h"
#include "slmops/cuda.h"
#include "slmops/kd_loss.h"
#include "slmops/quant.h"

using namespace slmops;
using namespace slmops::test_cases;

namespace {

struct HostQuantized {
  QuantSpec spec;
  QuantLayout L;
  std::vector<uint8_t> data, zps;
  std::vector<float> scales, dense;  // dense: the CPU ref dequantization
  cuda::QuantRows rows() const {
    return cuda::quant_rows(spec, L, {data.data(), scales.data(), zps.data()}, int64_t(dense.size()) / K, K);
  }
  int64_t K;
};

HostQuantized quantize_ref(const QuantSpec& spec, int64_t N, int64_t K, unsigned seed) {
  HostQuantized q{spec, quant_layout(spec, K), {}, {}, {}, {}, K};
  const auto w = make_weights(N, K, seed);
  q.data.resize(size_t(N * q.L.data_bytes_per_row));
  q.scales.resize(q.L.tensor_scale ? 1 : size_t(N * q.L.scales_per_row));
  q.zps.resize(size_t(N * q.L.zero_point_bytes_per_row));
  quantize(spec, w.data(), DType::kF32, N, K, {q.data.data(), q.scales.data(), q.zps.data()}, CpuIsa::kRef);
  q.dense.resize(size_t(N * K));
  dequantize(spec, {q.data.data(), q.scales.data(), q.zps.data()}, N, K, q.dense.data(), DType::kF32, CpuIsa::kRef);
  return q;
}

template <QuantFormat F>
float element(const cuda::QuantRows& a, int64_t r, int64_t k) {
  return cuda::dequant_element<F>(a, r, k);
}

float element_any(QuantFormat f, const cuda::QuantRows& a, int64_t r, int64_t k) {
  switch (f) {
    case QuantFormat::kInt8: return element<QuantFormat::kInt8>(a, r, k);
    case QuantFormat::kInt4: return element<QuantFormat::kInt4>(a, r, k);
    case QuantFormat::kNF4: return element<QuantFormat::kNF4>(a, r, k);
    case QuantFormat::kTernary: return element<QuantFormat::kTernary>(a, r, k);
    case QuantFormat::kQ4_0: return element<QuantFormat::kQ4_0>(a, r, k);
    case QuantFormat::kQ8_0: return element<QuantFormat::kQ8_0>(a, r, k);
    case QuantFormat::kQ4_K: return element<QuantFormat::kQ4_K>(a, r, k);
    case QuantFormat::kQ6_K: return element<QuantFormat::kQ6_K>(a, r, k);
    case QuantFormat::kTQ2_0: return element<QuantFormat::kTQ2_0>(a, r, k);
  }
  return NAN;
}

}  // namespace

class CudaHostDequantTest : public ::testing::TestWithParam<Case> {};

TEST_P(CudaHostDequantTest, ElementMatchesCpuRefBitForBit) {
  const Case c = GetParam();
  for (int64_t K : k_values(c)) {
    const int64_t N = 4;
    const HostQuantized q = quantize_ref({c.format, c.group_size, c.symmetric}, N, K, unsigned(K + 3));
    const cuda::QuantRows a = q.rows();
    for (int64_t r = 0; r < N; ++r)
      for (int64_t k = 0; k < K; ++k) {
        const float got = element_any(c.format, a, r, k), want = q.dense[size_t(r * K + k)];
        ASSERT_EQ(std::memcmp(&got, &want, 4), 0)
            << "K=" << K << " row " << r << " col " << k << ": " << got << " vs " << want;
      }
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, CudaHostDequantTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) { return case_name(info.param); });

// ---- the GEMV lane loops -----------------------------------------------------------------

namespace {

struct HostX {
  const float* x;
  int64_t K;
  float operator()(int m, int64_t k) const { return k < K ? x[m * K + k] : 0.0f; }
};

struct GemvCase {
  QuantFormat format;
  int64_t group_size;
  bool symmetric;
  int64_t K;
  bool vector_path;  // which lane loop the kernel takes for this layout
};

}  // namespace

class CudaHostGemvTest : public ::testing::TestWithParam<GemvCase> {};

TEST_P(CudaHostGemvTest, LanesSumToTheReferenceDot) {
  const GemvCase c = GetParam();
  const int64_t N = 5, K = c.K;
  const HostQuantized q = quantize_ref({c.format, c.group_size, c.symmetric}, N, K, 7);
  const cuda::QuantRows w = q.rows();
  const auto ff = c.format == QuantFormat::kInt4  ? cuda::FusedFormat::kInt4
                  : c.format == QuantFormat::kNF4 ? cuda::FusedFormat::kNF4
                                                  : cuda::FusedFormat::kInt8;
  ASSERT_EQ(cuda::gemv_vector_path(ff, w), c.vector_path);
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  for (int M : {1, 3, 8}) {
    std::vector<float> x(size_t(M * K));
    for (auto& v : x) v = nd(rng);
    const HostX hx{x.data(), K};
    for (int64_t n = 0; n < N; ++n) {
      float total[cuda::kGemvMaxRows] = {};
      for (int lane = 0; lane < 32; ++lane) {
        float acc[cuda::kGemvMaxRows] = {};
        if (c.vector_path) {
          switch (ff) {
            case cuda::FusedFormat::kInt4:
              cuda::gemv_lane_vector<cuda::FusedFormat::kInt4>(w, n, M, hx, lane, 32, acc);
              break;
            case cuda::FusedFormat::kNF4:
              cuda::gemv_lane_vector<cuda::FusedFormat::kNF4>(w, n, M, hx, lane, 32, acc);
              break;
            case cuda::FusedFormat::kInt8:
              cuda::gemv_lane_vector<cuda::FusedFormat::kInt8>(w, n, M, hx, lane, 32, acc);
              break;
          }
        } else {
          switch (c.format) {
            case QuantFormat::kInt4: cuda::gemv_lane_scalar<QuantFormat::kInt4>(w, n, M, hx, lane, 32, acc); break;
            case QuantFormat::kNF4: cuda::gemv_lane_scalar<QuantFormat::kNF4>(w, n, M, hx, lane, 32, acc); break;
            default: cuda::gemv_lane_scalar<QuantFormat::kInt8>(w, n, M, hx, lane, 32, acc); break;
          }
        }
        for (int m = 0; m < M; ++m) total[m] += acc[m];
      }
      for (int m = 0; m < M; ++m) {
        double want = 0.0, mag = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          want += double(q.dense[size_t(n * K + k)]) * x[size_t(m * K + k)];
          mag += std::fabs(double(q.dense[size_t(n * K + k)]) * x[size_t(m * K + k)]);
        }
        EXPECT_NEAR(total[m], want, 1e-5 * mag + 1e-6) << "row " << n << " M " << M << " m " << m;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, CudaHostGemvTest,
    ::testing::Values(GemvCase{QuantFormat::kInt4, 16, true, 256, true},   // two groups per chunk
                      GemvCase{QuantFormat::kInt4, 32, false, 512, true},  // asymmetric
                      GemvCase{QuantFormat::kInt4, 128, true, 100, true},  // zero-padded last group
                      GemvCase{QuantFormat::kInt4, 16, true, 40, false},   // 24-byte rows: scalar loop
                      GemvCase{QuantFormat::kNF4, 64, true, 192, true},    // high nibble first
                      GemvCase{QuantFormat::kNF4, 16, true, 48, false},    // 24-byte rows
                      GemvCase{QuantFormat::kInt8, 0, true, 96, true},     // one scale per row
                      GemvCase{QuantFormat::kInt8, 32, true, 160, true},   // groups of 32
                      GemvCase{QuantFormat::kInt8, 12, true, 96, false},   // groups across 8-byte halves
                      GemvCase{QuantFormat::kInt8, 0, true, 33, false}),   // odd K
    [](const ::testing::TestParamInfo<GemvCase>& info) {
      const GemvCase& c = info.param;
      return std::string(quant_format_info(c.format).name) + "_g" + std::to_string(c.group_size) +
             (c.symmetric ? "" : "_asym") + "_K" + std::to_string(c.K);
    });

// ---- the distillation row passes -----------------------------------------------------------

namespace {

struct HostLogits {
  const float* p;
  float operator()(int64_t j) const { return p[j]; }
};
struct HostStore {
  float* p;
  int64_t label;
  float hcoef;
  void operator()(int64_t j, float g) const { p[j] = j == label ? g - hcoef : g; }
};

// The kernel's driver (kd_loss.cu) with the block's threads run one after another and
// its reductions done in thread order.
float emulate_row(const KdOptions& o, const float* z, int64_t vocab, const float* t, int64_t n, int64_t label,
                  float grad_scale, float* grad, int threads) {
  using namespace cuda;
  const bool hard = o.hard_weight > 0.0f;
  const HostLogits zs{z}, ts{t};
  Lse lz, lt, lh;
  for (int tid = 0; tid < threads; ++tid) {
    Lse a, b, c;
    lse_pass(zs, ts, n, tid, threads, 1.0f / o.temperature, t != nullptr, hard && o.temperature != 1.0f, a, b, c);
    lz = lse_merge(lz, a);
    lt = lse_merge(lt, b);
    lh = lse_merge(lh, c);
  }
  const KdRow r = make_kd_row(o, grad_scale, lz, lt, lh, t != nullptr);
  const HostStore store{grad, label, r.hcoef};
  double soft = 0.0, kl = 0.0;
  if (r.soft)
    for (int tid = 0; tid < threads; ++tid)
      soft_pass(r, zs, ts, n, tid, threads, grad_in_soft_pass(r), store, &soft, &kl);
  if (!grad_in_soft_pass(r))
    for (int tid = 0; tid < threads; ++tid) grad_pass(r, zs, ts, n, tid, threads, float(kl), store);
  for (int64_t j = n; j < vocab; ++j) grad[j] = 0.0f;
  const float f = o.scale_t2 ? o.temperature * o.temperature : 1.0f;
  double loss = r.soft ? double(1.0f - o.hard_weight) * f * soft : 0.0;
  if (hard) loss += double(o.hard_weight) * (double(r.lh) - z[label]);
  return float(loss);
}

}  // namespace

TEST(CudaHostKdTest, RowPassesMatchTheDoubleReference) {
  const int64_t rows = 3, vocab = 70, tv = 64;  // the teacher's vocabulary is shorter
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> z(size_t(rows * vocab)), t(size_t(rows * tv));
  for (auto& v : z) v = nd(rng);
  for (auto& v : t) v = nd(rng);
  t[5] = -200.0f;  // a teacher probability that underflows to 0
  const std::vector<int64_t> labels = {3, 60, 17};
  for (Divergence d : {Divergence::kForwardKl, Divergence::kReverseKl, Divergence::kJsd})
    for (float T : {1.0f, 2.5f})
      for (float hw : {0.0f, 0.3f, 1.0f})
        for (float beta : {0.0f, 0.4f, 1.0f}) {
          if (d != Divergence::kJsd && beta != 0.4f) continue;
          KdOptions o;
          o.divergence = d;
          o.temperature = T;
          o.beta = beta;
          o.hard_weight = hw;
          const bool teacher = hw < 1.0f;
          KdTeacher kt;
          kt.vocab = vocab;  // the double reference reads the compared vocabulary from here
          if (teacher) {
            kt.logits = t.data();
            kt.vocab = tv;
          }
          std::vector<float> want_loss(rows), want_grad(size_t(rows * vocab));
          ref::kd_loss_fwd_bwd(o, z.data(), rows, vocab, kt, labels.data(), 0.5f, want_loss.data(), want_grad.data());
          for (int64_t r = 0; r < rows; ++r) {
            SCOPED_TRACE("div " + std::to_string(int(d)) + " T " + std::to_string(T) + " hw " + std::to_string(hw) +
                         " beta " + std::to_string(beta) + " row " + std::to_string(r));
            std::vector<float> grad(size_t(vocab), NAN);
            const float loss = emulate_row(o, z.data() + r * vocab, vocab, teacher ? t.data() + r * tv : nullptr,
                                           teacher ? tv : vocab, labels[size_t(r)], 0.5f, grad.data(), 7);
            EXPECT_NEAR(loss, want_loss[size_t(r)], 2e-4 * (1.0 + std::fabs(want_loss[size_t(r)])));
            for (int64_t j = 0; j < vocab; ++j)
              ASSERT_NEAR(grad[size_t(j)], want_grad[size_t(r * vocab + j)], 2e-5) << "id " << j;
          }
        }
}

TEST(CudaHostKdTest, NaNRowsGiveNaNLossAndGradientAsOnTheCpu) {
  // The passes floored a NaN log-probability to -1e30, so a NaN teacher logit gave a finite
  // loss (0 for forward KL). The rule is the CPU's: NaN in, NaN out (kd_loss.h).
  const int64_t vocab = 40;
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> z(static_cast<size_t>(vocab)), t(static_cast<size_t>(vocab));
  for (auto& v : z) v = nd(rng);
  for (auto& v : t) v = nd(rng);
  for (Divergence d : {Divergence::kForwardKl, Divergence::kReverseKl, Divergence::kJsd})
    for (int poisoned : {0, 1}) {  // 0: a NaN student logit, 1: a NaN teacher logit
      KdOptions o;
      o.divergence = d;
      std::vector<float> zs = z, ts = t, grad(size_t(vocab), 0.0f);
      (poisoned ? ts : zs)[7] = NAN;
      const float loss = emulate_row(o, zs.data(), vocab, ts.data(), vocab, 0, 1.0f, grad.data(), 7);
      EXPECT_TRUE(std::isnan(loss)) << int(d) << " " << poisoned;
      for (float g : grad) ASSERT_TRUE(std::isnan(g)) << int(d) << " " << poisoned;
    }
}

// ---- the host-side kernel choices ------------------------------------------------------------

TEST(CudaPlanTest, PathsFollowFormatDtypeRowsAndArchitecture) {
  using cuda::CudaQMatmulPath;
  const QuantSpec int4{QuantFormat::kInt4, 32, true}, q4k{QuantFormat::kQ4_K, 0, true};
  EXPECT_EQ(cuda::choose_qmatmul_path(int4, DType::kBF16, 1, 90), CudaQMatmulPath::kGemv);
  EXPECT_EQ(cuda::choose_qmatmul_path(int4, DType::kF32, 8, 90), CudaQMatmulPath::kGemv);
  EXPECT_EQ(cuda::choose_qmatmul_path(int4, DType::kBF16, 9, 90), CudaQMatmulPath::kTensorCore);
  EXPECT_EQ(cuda::choose_qmatmul_path(int4, DType::kBF16, 64, 75), CudaQMatmulPath::kDequantizeGemm);  // no bf16 mma
  EXPECT_EQ(cuda::choose_qmatmul_path(int4, DType::kF16, 64, 75), CudaQMatmulPath::kTensorCore);
  EXPECT_EQ(cuda::choose_qmatmul_path(int4, DType::kF32, 64, 90), CudaQMatmulPath::kDequantizeGemm);
  EXPECT_EQ(cuda::choose_qmatmul_path(int4, DType::kF16, cuda::kCudaTensorCoreMaxRows + 1, 90),
            CudaQMatmulPath::kDequantizeGemm);
  EXPECT_EQ(cuda::choose_qmatmul_path(q4k, DType::kF16, 1, 90), CudaQMatmulPath::kDequantizeGemm);
}

TEST(CudaPlanTest, SplitKFillsTheGpuOnlyWhenTilesAreFew) {
  // M=16, N=4096: 64 output tiles for 132 SMs -> 5 splits to reach ~2 blocks per SM.
  EXPECT_EQ(cuda::tensor_core_split_k(16, 4096, 14336, 132), 5);
  EXPECT_EQ(cuda::tensor_core_split_k(512, 14336, 4096, 132), 1);  // 1792 tiles already
  EXPECT_EQ(cuda::tensor_core_split_k(16, 64, 14336, 132), 16);    // capped
  EXPECT_EQ(cuda::tensor_core_split_k(16, 64, 64, 132), 1);        // K too short to split
}
