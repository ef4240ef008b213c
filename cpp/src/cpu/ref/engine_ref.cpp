// The scalar engine passes (the "ref" set, for SLMOPS_MAX_CPU_ISA=ref and CPUs without
// AVX2), and the dispatcher of the family.
#include <algorithm>
#include <cmath>

#include "cpu/engine_kernels.h"
#include "cpu/isa_dispatch.h"

namespace slmops::cpu {
namespace ref {
namespace {

void scores(const float* q, const float* keys, int64_t n, int64_t d, float scale, float* s) {
  for (int64_t j = 0; j < n; ++j) {
    const float* k = keys + j * d;
    float acc = 0.0f;
    for (int64_t i = 0; i < d; ++i) acc += q[i] * k[i];
    s[j] = scale * acc;
  }
}

void accumulate(const float* p, const float* values, int64_t n, int64_t d, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    const float* v = values + j * d;
    for (int64_t i = 0; i < d; ++i) out[i] += p[j] * v[i];
  }
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
  static const EngineKernels k{&scores, &accumulate, &softmax_exp, &silu_mul};
  return k;
}

}  // namespace ref

const EngineKernels& engine_kernels_for(CpuIsa isa) {
  return kernels_for_isa<EngineKernels>(isa, SLMOPS_CPU_ISA_KERNELS(engine_kernels));
}

}  // namespace slmops::cpu
