// The scalar engine passes (the "ref" set, for SLMOPS_MAX_CPU_ISA=ref and CPUs without
// AVX2).
#include <algorithm>
#include <cmath>

#include "common/half.h"
#include "cpu/engine_kernels.h"

namespace slmops::cpu {
namespace ref {
namespace {

template <class T>
float value(T x) {
  if constexpr (sizeof(T) == 2)
    return f16_to_f32(x);
  else
    return x;
}

// kscale: per key (int8), or nullptr (the values themselves).
template <class T>
void scores_scaled(const float* q, int64_t heads, const T* kt, const float* kscale, int64_t n, int64_t ld, int64_t d,
                   float scale, float* s, int64_t s_stride) {
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (int64_t i = 0; i < d; ++i) acc += q[h * d + i] * value(kt[i * ld + j]);
      s[h * s_stride + j] = scale * (kscale ? kscale[j] : 1.0f) * acc;
    }
}

template <class T>
void scores(const float* q, int64_t heads, const T* kt, int64_t n, int64_t ld, int64_t d, float scale, float* s,
            int64_t s_stride) {
  scores_scaled(q, heads, kt, nullptr, n, ld, d, scale, s, s_stride);
}

template <class T>
void accumulate(const float* p, int64_t p_stride, int64_t heads, const T* values, int64_t n, int64_t d, float* out) {
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < d; ++i) out[h * d + i] += p[h * p_stride + j] * value(values[j * d + i]);
}

float softmax_exp(float* s, int64_t n) {
  float mx = s[0];
  for (int64_t j = 1; j < n; ++j) mx = std::max(mx, s[j]);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
  return sum;
}

void silu_mul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace

const EngineKernels& engine_kernels() {
  static const EngineKernels k{&scores<float>,        &scores<uint16_t>,   &scores_scaled<int8_t>, &accumulate<float>,
                               &accumulate<uint16_t>, &accumulate<int8_t>, &softmax_exp,           &silu_mul};
  return k;
}

}  // namespace ref

}  // namespace slmops::cpu
