// The per-row passes of the distillation losses, one table per ISA (ref, avx2, avx512).
// The driver (kd_loss.cpp) owns threading, dtypes, labels and the top-k teacher; a pass
// sees fp32 rows of n logits. Notation: s = 1 / T, lq = z s - ls, lp = t s - lt,
// q = exp(lq), p = exp(lp). `grad` may be the same buffer as `z` (the fused loss turns its
// logits into their gradient in place): a pass reads z[j] before it writes grad[j].
// hcoef != 0 adds the hard-label term hcoef * exp(z[j] - lh) (softmax of the untempered
// logits, lh their log-sum-exp) to the gradient in the same pass.
#pragma once

#include <cstdint>
#include <limits>

#include "slmops/cpu_features.h"

namespace slmops::cpu {

// NaN in, NaN out: a row whose compared student or teacher logits hold NaN or +Inf (-Inf is
// a valid logit, probability 0), or whose top-k log-probabilities hold NaN, gets a NaN loss
// and a NaN gradient over the compared ids, on every ISA and in the double-precision oracle
// alike, instead of whatever the passes' clamps (which keep masked -Inf ids at 0) make of it.
static inline bool poisons_row(const float* x, int64_t n) {
  bool bad = false;  // branch-free, so it vectorizes
  for (int64_t j = 0; j < n; ++j) bad |= !(x[j] < std::numeric_limits<float>::infinity());
  return bad;
}

struct KdKernels {
  // log(sum exp(s x[j])), stable (running max).
  float (*lse)(const float* x, int64_t n, float s);
  // Forward KL sum p (lp - lq); grad (if not null) = coef (q - p) [+ hard term].
  float (*forward_kl)(const float* z, const float* t, int64_t n, float s, float ls, float lt, float coef, float hcoef,
                      float lh, float* grad);
  // Reverse KL sum q (lq - lp); stash (if not null) = lq - lp.
  float (*reverse_kl)(const float* z, const float* t, int64_t n, float s, float ls, float lt, float* stash);
  // Generalized JSD with lm = log(beta p + (1 - beta) q); stash (if not null) = lq - lm;
  // *kl_qm = sum q (lq - lm).
  float (*jsd)(const float* z, const float* t, int64_t n, float s, float ls, float lt, float beta, float* stash,
               float* kl_qm);
  // grad = coef q (stash - c) [+ hard term]: the gradient of reverse KL and JSD.
  void (*stash_grad)(const float* z, const float* stash, int64_t n, float s, float ls, float c, float coef, float hcoef,
                     float lh, float* grad);
  // grad = a q [+ hard term]: the dense part of the top-k gradient, and hard-label only.
  void (*softmax_grad)(const float* z, int64_t n, float s, float ls, float a, float hcoef, float lh, float* grad);
};

const KdKernels& kd_kernels_for(CpuIsa isa);

namespace ref { const KdKernels& kd_kernels(); }
#ifdef SLMOPS_HAVE_AVX2
namespace avx2 { const KdKernels& kd_kernels(); }
#endif
#ifdef SLMOPS_HAVE_AVX512
namespace avx512 { const KdKernels& kd_kernels(); }
#endif

}  // namespace slmops::cpu
