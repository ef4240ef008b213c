// The scalar distillation passes (the "ref" kernel set, for SLMOPS_MAX_CPU_ISA=ref and
// CPUs without AVX2), and ref::kd_loss_fwd_bwd: the whole loss and gradient in double
// precision, written directly from the definitions, as the oracle of the C++ tests.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kd_kernels.h"
#include "slmops/kd_loss.h"

namespace slmops {
namespace cpu::ref {
namespace {

constexpr float kLogFloor = -1e30f;  // as in kd_simd.inc: 0 * (lp - lq) stays 0 for masked ids

float log_prob(float x, float s, float l) { return std::max(kLogFloor, x * s - l); }

float lse(const float* x, int64_t n, float s) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j] * s);
  double d = 0.0;
  for (int64_t j = 0; j < n; ++j) d += std::exp(double(x[j] * s - m));
  return m + float(std::log(d));
}

float forward_kl(const float* z, const float* t, int64_t n, float s, float ls, float lt, float coef, float hcoef,
                 float lh, float* grad) {
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const float zj = z[j], lq = log_prob(zj, s, ls), lp = log_prob(t[j], s, lt), p = std::exp(lp);
    acc += double(p) * (lp - lq);
    if (grad) grad[j] = coef * (std::exp(lq) - p) + (hcoef != 0.0f ? hcoef * std::exp(zj - lh) : 0.0f);
  }
  return float(acc);
}

float reverse_kl(const float* z, const float* t, int64_t n, float s, float ls, float lt, float* stash) {
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const float lq = log_prob(z[j], s, ls), a = lq - log_prob(t[j], s, lt);
    acc += double(std::exp(lq)) * a;
    if (stash) stash[j] = a;
  }
  return float(acc);
}

float jsd(const float* z, const float* t, int64_t n, float s, float ls, float lt, float beta, float* stash,
          float* kl_qm) {
  const float log_b = std::log(beta), log_b1 = std::log1p(-beta);
  double acc_p = 0.0, acc_q = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const float lq = log_prob(z[j], s, ls), lp = log_prob(t[j], s, lt);
    const float a = lp + log_b, b = lq + log_b1, hi = std::max(a, b);
    const float lm = hi + std::log1p(std::exp(std::min(a, b) - hi));
    acc_p += double(std::exp(lp)) * (lp - lm);
    acc_q += double(std::exp(lq)) * (lq - lm);
    if (stash) stash[j] = lq - lm;
  }
  *kl_qm = float(acc_q);
  return float(beta * acc_p + (1.0 - beta) * acc_q);
}

void stash_grad(const float* z, const float* stash, int64_t n, float s, float ls, float c, float coef, float hcoef,
                float lh, float* grad) {
  for (int64_t j = 0; j < n; ++j) {
    const float zj = z[j];
    grad[j] =
        coef * std::exp(log_prob(zj, s, ls)) * (stash[j] - c) + (hcoef != 0.0f ? hcoef * std::exp(zj - lh) : 0.0f);
  }
}

void softmax_grad(const float* z, int64_t n, float s, float ls, float a, float hcoef, float lh, float* grad) {
  for (int64_t j = 0; j < n; ++j) {
    const float zj = z[j];
    grad[j] = a * std::exp(log_prob(zj, s, ls)) + (hcoef != 0.0f ? hcoef * std::exp(zj - lh) : 0.0f);
  }
}

}  // namespace

const KdKernels& kd_kernels() {
  static const KdKernels k{lse, forward_kl, reverse_kl, jsd, stash_grad, softmax_grad};
  return k;
}

}  // namespace cpu::ref

namespace ref {
namespace {

std::vector<double> log_softmax(const double* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  double d = 0.0;
  for (int64_t j = 0; j < n; ++j) d += std::exp(x[j] - m);
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) out[size_t(j)] = x[j] - m - std::log(d);
  return out;
}

// Loss over categories with log-probabilities lp (teacher) and lq (student), and
// g[c] = d loss / d lq[c] holding lq as free variables (the chain rule through the
// softmax is applied by the caller).
double divergence(const KdOptions& opt, const std::vector<double>& lp, const std::vector<double>& lq,
                  std::vector<double>& g) {
  const size_t n = lp.size();
  g.assign(n, 0.0);
  double beta = opt.beta;
  Divergence div = opt.divergence;
  if (div == Divergence::kJsd && beta == 0.0) div = Divergence::kForwardKl;
  if (div == Divergence::kJsd && beta == 1.0) div = Divergence::kReverseKl;
  double loss = 0.0;
  for (size_t c = 0; c < n; ++c) {
    const double p = std::exp(lp[c]), q = std::exp(lq[c]);
    if (div == Divergence::kForwardKl) {
      if (p > 0) loss += p * (lp[c] - lq[c]);
      g[c] = -p;
    } else if (div == Divergence::kReverseKl) {
      loss += q * (lq[c] - lp[c]);
      g[c] = q * (lq[c] - lp[c]) + q;
    } else {
      const double m = beta * p + (1 - beta) * q, lm = std::log(m);
      if (p > 0) loss += beta * p * (lp[c] - lm);
      if (q > 0) loss += (1 - beta) * q * (lq[c] - lm);
      g[c] = (1 - beta) * q * (lq[c] - lm);
    }
  }
  return loss;
}

}  // namespace

void kd_loss_fwd_bwd(const KdOptions& opt, const float* student, int64_t rows, int64_t vocab, const KdTeacher& teacher,
                     const int64_t* labels, float grad_scale, float* loss_rows, float* grad) {
  const bool topk = teacher.topk_ids != nullptr;
  const int64_t n = topk ? vocab : std::min(vocab, teacher.vocab);
  const double T = opt.temperature, f = opt.scale_t2 ? T * T : 1.0;
  const double hw = opt.hard_weight, sw = 1.0 - hw;
  std::vector<double> u(static_cast<size_t>(n)), z(static_cast<size_t>(n)), g;
  for (int64_t r = 0; r < rows; ++r) {
    float* gr = grad ? grad + r * vocab : nullptr;
    if (gr) std::fill(gr, gr + vocab, 0.0f);
    loss_rows[r] = 0.0f;
    if (labels && labels[r] == opt.ignore_index) continue;
    const auto* t_logits = static_cast<const float*>(teacher.logits);
    const bool poisoned = cpu::poisons_row(student + r * vocab, n) ||
                          (t_logits && cpu::poisons_row(t_logits + r * teacher.vocab, n)) ||
                          (topk && cpu::poisons_row(teacher.topk_logprobs + r * teacher.k, teacher.k));
    if (poisoned) {  // NaN in, NaN out (see cpu::poisons_row)
      loss_rows[r] = std::numeric_limits<float>::quiet_NaN();
      if (gr) std::fill(gr, gr + n, std::numeric_limits<float>::quiet_NaN());  // ids past n stay 0
      continue;
    }
    for (int64_t j = 0; j < n; ++j) {
      z[size_t(j)] = student[r * vocab + j];
      u[size_t(j)] = z[size_t(j)] / T;
    }
    const std::vector<double> lq_full = log_softmax(u.data(), n);
    std::vector<double> du(size_t(n), 0.0);  // d soft / d u
    double soft = 0.0;
    if (sw > 0 && !topk) {
      std::vector<double> v(static_cast<size_t>(n));
      const auto* t = static_cast<const float*>(teacher.logits) + r * teacher.vocab;
      for (int64_t j = 0; j < n; ++j) v[size_t(j)] = t[j] / T;
      const std::vector<double> lp = log_softmax(v.data(), n);
      soft = divergence(opt, lp, lq_full, g);
      double gs = 0.0;
      for (int64_t j = 0; j < n; ++j) gs += g[size_t(j)];
      for (int64_t j = 0; j < n; ++j) du[size_t(j)] = g[size_t(j)] - std::exp(lq_full[size_t(j)]) * gs;
    } else if (sw > 0) {
      // k + 1 categories: the teacher's ids and the tail.
      const int64_t k = teacher.k;
      const int64_t* ids = teacher.topk_ids + r * k;
      const float* lv = teacher.topk_logprobs + r * k;
      std::vector<double> ell(static_cast<size_t>(k + 1)), lq(static_cast<size_t>(k + 1));
      double mass = 0.0, qs = 0.0;
      for (int64_t i = 0; i < k; ++i) {
        ell[size_t(i)] = lv[i] / T;
        mass += std::exp(double(lv[i]));
        lq[size_t(i)] = lq_full[size_t(ids[i])];
        qs += std::exp(lq[size_t(i)]);
      }
      ell[size_t(k)] = std::log(std::max(1.0 - mass, 1e-30)) / T;
      lq[size_t(k)] = std::log(std::max(1.0 - qs, 1e-30));
      const std::vector<double> lp = log_softmax(ell.data(), k + 1);
      soft = divergence(opt, lp, lq, g);
      // d lq_i / d u_j = [j = i] - q_j; d lq_tail / d u_j = -(q_j [j in S] - q_j qs) / q_tail
      const double q_tail = std::exp(lq[size_t(k)]);
      double G = 0.0;
      for (int64_t i = 0; i < k; ++i) G += g[size_t(i)];
      const double gt = g[size_t(k)] / q_tail;
      for (int64_t j = 0; j < n; ++j) du[size_t(j)] = std::exp(lq_full[size_t(j)]) * (-G + gt * qs);
      for (int64_t i = 0; i < k; ++i) du[size_t(ids[i])] += g[size_t(i)] - gt * std::exp(lq[size_t(i)]);
    }
    double loss = sw * f * soft;
    std::vector<double> dz(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) dz[size_t(j)] = sw * f * du[size_t(j)] / T;
    if (hw > 0) {
      const int64_t y = labels[r];
      const std::vector<double> lz = log_softmax(z.data(), n);
      loss += hw * -lz[size_t(y)];
      for (int64_t j = 0; j < n; ++j) dz[size_t(j)] += hw * std::exp(lz[size_t(j)]);
      dz[size_t(y)] -= hw;
    }
    loss_rows[r] = float(loss);
    if (gr)
      for (int64_t j = 0; j < n; ++j) gr[j] = float(grad_scale * dz[size_t(j)]);
  }
}

}  // namespace ref
}  // namespace slmops
