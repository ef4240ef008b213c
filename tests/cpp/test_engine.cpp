// The engine's row passes on every ISA against float64 sums written from their
// definitions, on head sizes and lengths that leave vector tails; qmatmul_group against
// qmatmul weight by weight (bit for bit); the sampler's seeded determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/half.h"
#include "cpu/engine_kernels.h"
#include "quant_cases.h"
#include "slmops/engine.h"
#include "slmops/qmatmul.h"

using namespace slmops;

namespace {

std::vector<float> gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// fp32 sums of up to ~100 terms against float64: a few ulps of the largest term each.
constexpr double kRowTol = 1e-5;

TEST(EngineKernels, AttentionPassesMatchTheirDefinitions) {
  for (CpuIsa isa : available_cpu_isas()) {
    const cpu::EngineKernels& k = cpu::engine_kernels_for(isa);
    for (int64_t heads : {1, 3, 6})
      for (int64_t d : {1, 7, 12, 16, 33, 64, 80})
        for (int64_t n : {1, 3, 16, 31}) {
          const int64_t ld = (n + 15) / 16 * 16;  // the keys' block: n valid columns of ld
          const int64_t stride = n + 5;           // rows of scores / probabilities, padded
          const auto q = gaussian(size_t(heads * d), 1), kt = gaussian(size_t(d * ld), 2);
          const auto p = gaussian(size_t(heads * stride), 3), values = gaussian(size_t(n * d), 4);
          std::vector<uint16_t> kt16(kt.size()), values16(values.size());
          std::vector<float> kt_h(kt.size()), values_h(values.size());  // what the halves hold
          for (size_t i = 0; i < kt.size(); ++i) kt_h[i] = f16_to_f32(kt16[i] = f32_to_f16(kt[i]));
          for (size_t i = 0; i < values.size(); ++i) values_h[i] = f16_to_f32(values16[i] = f32_to_f16(values[i]));
          // int8: codes over the whole range, a scale per key (ld of them); the values' scales
          // are folded into p by the caller, so the pass takes the codes alone.
          std::mt19937 rng(6);
          std::uniform_int_distribution<int> code(-127, 127);
          std::uniform_real_distribution<float> unit(0.001f, 0.02f);
          std::vector<int8_t> kt8(kt.size()), values8(values.size());
          std::vector<float> kscale(static_cast<size_t>(ld)), kt_q(kt.size()), values_q(values.size());
          for (float& x : kscale) x = unit(rng);
          for (size_t i = 0; i < kt.size(); ++i) kt_q[i] = float(kt8[i] = int8_t(code(rng))) * kscale[i % size_t(ld)];
          for (size_t i = 0; i < values.size(); ++i) values_q[i] = float(values8[i] = int8_t(code(rng)));
          std::vector<float> p_folded(p.size());  // p times a value scale of the size int8 rows get
          for (size_t i = 0; i < p.size(); ++i) p_folded[i] = p[i] * unit(rng);
          for (int cache : {0, 1, 2}) {  // fp32, fp16, int8
            const std::vector<float>& K = cache == 0 ? kt : cache == 1 ? kt_h : kt_q;
            const std::vector<float>& V = cache == 0 ? values : cache == 1 ? values_h : values_q;
            const std::vector<float>& P = cache == 2 ? p_folded : p;
            std::vector<float> s(static_cast<size_t>(heads * stride), -1.0f), out = gaussian(size_t(heads * d), 5);
            const std::vector<float> out0 = out;
            if (cache == 1) {
              k.scores_f16(q.data(), heads, kt16.data(), n, ld, d, 0.5f, s.data(), stride);
              k.accumulate_f16(p.data(), stride, heads, values16.data(), n, d, out.data());
            } else if (cache == 2) {
              k.scores_i8(q.data(), heads, kt8.data(), kscale.data(), n, ld, d, 0.5f, s.data(), stride);
              k.accumulate_i8(P.data(), stride, heads, values8.data(), n, d, out.data());
            } else {
              k.scores_f32(q.data(), heads, kt.data(), n, ld, d, 0.5f, s.data(), stride);
              k.accumulate_f32(p.data(), stride, heads, values.data(), n, d, out.data());
            }
            for (int64_t h = 0; h < heads; ++h) {
              for (int64_t j = 0; j < n; ++j) {
                double ref = 0;
                for (int64_t i = 0; i < d; ++i) ref += double(q[size_t(h * d + i)]) * K[size_t(i * ld + j)];
                EXPECT_NEAR(s[size_t(h * stride + j)], 0.5 * ref, kRowTol * (1 + std::abs(ref)))
                    << cpu_isa_name(isa) << " cache=" << cache << " heads=" << heads << " d=" << d;
              }
              EXPECT_EQ(s[size_t(h * stride + n)], -1.0f);  // nothing written past n
              for (int64_t i = 0; i < d; ++i) {
                double ref = out0[size_t(h * d + i)];
                for (int64_t j = 0; j < n; ++j) ref += double(P[size_t(h * stride + j)]) * V[size_t(j * d + i)];
                EXPECT_NEAR(out[size_t(h * d + i)], ref, kRowTol * (1 + std::abs(ref)))
                    << cpu_isa_name(isa) << " cache=" << cache << " heads=" << heads << " d=" << d;
              }
            }
          }
        }
  }
}

TEST(EngineKernels, SoftmaxAndSwiGluMatchTheirDefinitions) {
  for (CpuIsa isa : available_cpu_isas()) {
    const cpu::EngineKernels& k = cpu::engine_kernels_for(isa);
    for (int64_t n : {1, 5, 16, 17, 100, 1536}) {
      auto s = gaussian(size_t(n), 5);
      for (float& x : s) x *= 8;
      const auto s0 = s;
      const float sum = k.softmax_exp(s.data(), n);
      double mx = s0[0], ref_sum = 0;
      for (float x : s0) mx = std::max(mx, double(x));
      for (int64_t j = 0; j < n; ++j) {
        const double e = std::exp(double(s0[size_t(j)]) - mx);
        ref_sum += e;
        EXPECT_NEAR(s[size_t(j)], e, 2e-6 * e + 1e-30) << cpu_isa_name(isa);
      }
      EXPECT_NEAR(sum, ref_sum, 1e-5 * ref_sum) << cpu_isa_name(isa);

      auto gate = gaussian(size_t(n), 6), up = gaussian(size_t(n), 7);
      for (float& x : gate) x *= 6;
      const auto g0 = gate;
      k.silu_mul(gate.data(), up.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double g = g0[size_t(i)], ref = g / (1 + std::exp(-g)) * up[size_t(i)];
        EXPECT_NEAR(gate[size_t(i)], ref, 2e-6 * (1 + std::abs(ref))) << cpu_isa_name(isa);
      }
    }
  }
}

TEST(QMatmulGroup, EqualsQmatmulWeightByWeight) {
  for (auto [fmt, group] : {std::pair{QuantFormat::kQ4_0, 0}, {QuantFormat::kInt4, 64}, {QuantFormat::kQ8_0, 0}})
    for (QMatmulActivation act : {QMatmulActivation::kFloat, QMatmulActivation::kInt8})
      for (int64_t M : {1, 3}) {
        const QuantSpec spec{fmt, group, true};
        const int64_t K = 192;
        std::vector<test_cases::Quantized> qs;
        std::vector<PackedWeight> packs;
        const int64_t Ns[] = {40, 16, 7};
        for (int i = 0; i < 3; ++i) {
          const auto w = gaussian(size_t(Ns[i] * K), 10 + i);
          qs.push_back(test_cases::quantize_with(spec, w.data(), DType::kF32, Ns[i], K, CpuIsa::kAuto));
        }
        for (int i = 0; i < 3; ++i) packs.push_back(pack_weight(spec, qs[size_t(i)].storage(), Ns[i], K));
        const auto x = gaussian(size_t(M * K), 20), bias = gaussian(64, 21);
        std::vector<std::vector<float>> ref(3), got(3);
        std::vector<QMatmulTarget> targets;
        for (int i = 0; i < 3; ++i) {
          ref[size_t(i)].resize(size_t(M * Ns[i]));
          got[size_t(i)].resize(size_t(M * Ns[i]));
          const float* b = i == 1 ? bias.data() : nullptr;
          qmatmul(packs[size_t(i)], x.data(), DType::kF32, M, b, ref[size_t(i)].data(), DType::kF32, act);
          targets.push_back({&packs[size_t(i)], b, got[size_t(i)].data()});
        }
        qmatmul_group(targets, x.data(), M, act);
        for (int i = 0; i < 3; ++i) EXPECT_EQ(got[size_t(i)], ref[size_t(i)]) << quant_format_info(fmt).name;
      }
}

TEST(Sampler, TheSameSeedGivesTheSameTokens) {
  const auto logits = gaussian(1000, 30);
  auto draw = [&](uint64_t seed) {
    engine::SamplingParams p;
    p.temperature = 1.0f;
    p.top_p = 0.9f;
    p.seed = seed;
    engine::Sampler s(p);
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) {
      auto z = logits;
      out.push_back(s.sample(z.data(), 1000, nullptr, 0, 0));
    }
    return out;
  };
  EXPECT_EQ(draw(1), draw(1));
  EXPECT_NE(draw(1), draw(2));
}

}  // namespace
