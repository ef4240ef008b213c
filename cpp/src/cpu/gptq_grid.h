// One group's quantization grid for GPTQ, shared by the optimized and reference loops so
// that both round exactly as slmops.quantize does (see GptqGrid in slmops/gptq.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "slmops/gptq.h"

namespace slmops::gptq_detail {

inline int rne(float x) { return int(std::nearbyint(x)); }
inline int max_code(const GptqGrid& g) { return (1 << g.bits) - 1; }
inline int mid_code(const GptqGrid& g) { return 1 << (g.bits - 1); }
// int8 keeps [-127, 127]: code 0 (-128) is never used.
inline int min_code(const GptqGrid& g) { return g.bits == 8 && g.symmetric ? 1 : 0; }

inline void group_params(const float* x, int64_t n, const GptqGrid& g, float* scale, uint8_t* zero) {
  if (g.symmetric) {
    float best = 0.0f, best_abs = 0.0f;  // signed absmax, the first one wins a tie
    for (int64_t i = 0; i < n; ++i) {
      const float a = std::fabs(x[i]);
      if (a > best_abs) {
        best_abs = a;
        best = x[i];
      }
    }
    *scale = g.bits == 8 ? best_abs / 127.0f : best / -float(mid_code(g));
    *zero = uint8_t(mid_code(g));
    return;
  }
  float mn = 0.0f, mx = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  *scale = (mx - mn) / float(max_code(g));
  const float inv = *scale != 0.0f ? 1.0f / *scale : 0.0f;
  *zero = uint8_t(*scale != 0.0f ? std::clamp(rne(-mn * inv), 0, max_code(g)) : mid_code(g));
}

inline int quantize_value(float x, float scale, int zero, const GptqGrid& g) {
  const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
  return std::clamp(rne(x * inv) + zero, min_code(g), max_code(g));
}

}  // namespace slmops::gptq_detail
