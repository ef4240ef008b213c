// The scalar attention passes (the "ref" set, for SLMOPS_MAX_CPU_ISA=ref and CPUs without
// AVX2), and the dispatcher of the family.
#include "cpu/attention_kernels.h"
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

}  // namespace

const AttentionKernels& attention_kernels() {
  static const AttentionKernels k{&scores, &accumulate};
  return k;
}

}  // namespace ref

const AttentionKernels& attention_kernels_for(CpuIsa isa) {
  return kernels_for_isa<AttentionKernels>(isa, SLMOPS_CPU_ISA_KERNELS(attention_kernels));
}

}  // namespace slmops::cpu
