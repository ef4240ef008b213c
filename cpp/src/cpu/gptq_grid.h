// One group's quantization grid for GPTQ, shared by the optimized and reference loops so
// that both round exactly as slmops.quantize does (see GptqGrid in slmops/gptq.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/quant_common.h"
#include "slmops/gptq.h"

namespace slmops::gptq_detail {

inline int rne(float x) { return int(std::nearbyint(x)); }
inline int max_code(const GptqGrid& g) { return (1 << g.bits) - 1; }
inline int mid_code(const GptqGrid& g) { return 1 << (g.bits - 1); }
// int8 keeps [-127, 127]: code 0 (-128) is never used.
inline int min_code(const GptqGrid& g) { return g.bits == 8 && g.symmetric ? 1 : 0; }

inline int quantize_value(float x, float scale, int zero, const GptqGrid& g) {
  const float inv = cpu::inv_or_zero(1.0f, scale);
  return std::clamp(rne(x * inv) + zero, min_code(g), max_code(g));
}

// The grid of a range: signed absmax (symmetric) or [min, max] (asymmetric), times p.
inline void range_params(float signed_absmax, float mn, float mx, float p, const GptqGrid& g, float* scale,
                         uint8_t* zero) {
  if (g.symmetric) {
    *scale = g.bits == 8 ? p * std::fabs(signed_absmax) / 127.0f : p * signed_absmax / -float(mid_code(g));
    *zero = uint8_t(mid_code(g));
    return;
  }
  mn *= p;
  mx *= p;
  *scale = (mx - mn) / float(max_code(g));
  const float inv = cpu::inv_or_zero(1.0f, *scale);
  *zero = uint8_t(*scale != 0.0f ? std::clamp(rne(-mn * inv), 0, max_code(g)) : mid_code(g));
}

// GPTQ's Quantizer(mse=True) grid: shrink factors 1 - i / 100 for i < 80.
constexpr int kShrinkSteps = 80;
constexpr float kShrinkStep = 0.01f;

inline void group_params(const float* x, int64_t n, const GptqGrid& g, float* scale, uint8_t* zero) {
  float signed_absmax = 0.0f, absmax = 0.0f, mn = 0.0f, mx = 0.0f;  // the first absmax wins a tie
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a > absmax) {
      absmax = a;
      signed_absmax = x[i];
    }
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  range_params(signed_absmax, mn, mx, 1.0f, g, scale, zero);
  if (!g.mse) return;
  float best = std::numeric_limits<float>::infinity();
  for (int step = 0; step < kShrinkSteps; ++step) {
    float s;
    uint8_t z;
    range_params(signed_absmax, mn, mx, 1.0f - float(step) * kShrinkStep, g, &s, &z);
    // quantize_value in float, so that the loop vectorizes: the codes are small integers,
    // exact in float, and (v + 1.5 * 2^23) - 1.5 * 2^23 rounds half to even as nearbyint
    // does for |v| < 2^22 (v is clamped to that first; the code is clamped after anyway).
    const float inv = cpu::inv_or_zero(1.0f, s), zf = float(z);
    const float lo = float(min_code(g)), hi = float(max_code(g));
    constexpr float kRound = 12582912.0f, kLimit = 4194304.0f;
    float err = 0.0f;
#pragma omp simd reduction(+ : err)
    for (int64_t i = 0; i < n; ++i) {
      const float v = std::min(std::max(x[i] * inv, -kLimit), kLimit);
      const float q = std::min(std::max((v + kRound) - kRound + zf, lo), hi);
      const float e = (q - zf) * s - x[i];
      err += e * e;
    }
    if (err < best) {  // strictly less: the widest range wins a tie
      best = err;
      *scale = s;
      *zero = z;
    }
  }
}

}  // namespace slmops::gptq_detail
