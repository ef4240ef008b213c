// The distillation loss of one row (kd_loss.h) as the CUDA kernel computes it, in passes
// over the row that each thread of a block runs on its strided share of the ids, with a
// block reduction between passes (kd_loss.cu). Host and device (hd.h): the host tests run
// the same passes thread by thread against ref::kd_loss_fwd_bwd.
//
//   pass 1 (lse_pass): log-sum-exp of z/T, t/T and, for the hard term at T != 1, of z
//   pass 2 (soft_pass): the soft loss and, for reverse KL / JSD, the sum their gradient
//          needs; forward KL writes its gradient here already
//   pass 3 (grad_pass): the gradient of reverse KL and JSD (and of hard-only rows)
// The arithmetic follows the CPU row kernels (cpu/ref/kd_ref.cpp): fp32 per id, the sums
// in double.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/hd.h"
#include "slmops/kd_loss.h"

namespace slmops::cuda {

// A running log-sum-exp: max m and sum of exp(v - m) over the values pushed so far.
struct Lse {
  float m = -INFINITY;
  float d = 0.0f;
};

SLMOPS_HD float hd_exp(float v) { return expf(v); }
SLMOPS_HD float hd_log(float v) { return logf(v); }

SLMOPS_HD void lse_push(Lse& a, float v) {
  if (v > a.m) {
    a.d = a.d * hd_exp(a.m - v) + 1.0f;  // exp(-inf) = 0 for the first value
    a.m = v;
  } else {
    a.d += hd_exp(v - a.m);
  }
}

SLMOPS_HD Lse lse_merge(Lse a, Lse b) {
  if (a.d == 0.0f) return b;  // empty shares (a block wider than the row)
  if (b.d == 0.0f) return a;
  const float m = a.m > b.m ? a.m : b.m;
  return Lse{m, a.d * hd_exp(a.m - m) + b.d * hd_exp(b.m - m)};
}

SLMOPS_HD float lse_value(Lse a) { return a.m + hd_log(a.d); }

// Everything a row's passes share, fixed by the options and pass 1.
struct KdRow {
  Divergence div;  // effective: JSD with beta 0 or 1 is forward / reverse KL
  bool soft;       // hard_weight < 1
  bool hard;       // hard_weight > 0
  float s;         // 1 / T
  float ls, lt;    // log-sum-exp of z/T and t/T
  float lh;        // log-sum-exp of z (the hard term's softmax)
  float beta, log_b, log_b1;
  float coef;   // (1 - hard_weight) * f * grad_scale / T
  float hcoef;  // hard_weight * grad_scale
};

constexpr float kKdLogFloor = -1e30f;  // as the CPU kernels: 0 * (lp - lq) stays 0
// The floor keeps masked (-Inf) ids at probability 0 but lets a NaN through: NaN in, NaN
// out, as the CPU's rule (cpu::poisons_row) has it; a floored NaN gave a finite loss.
SLMOPS_HD float log_prob(float x, float s, float l) {
  const float v = x * s - l;
  return v > kKdLogFloor || v != v ? v : kKdLogFloor;
}

SLMOPS_HD Divergence effective_divergence(const KdOptions& o) {
  if (o.divergence == Divergence::kJsd && o.beta == 0.0f) return Divergence::kForwardKl;
  if (o.divergence == Divergence::kJsd && o.beta == 1.0f) return Divergence::kReverseKl;
  return o.divergence;
}

// Pass 1 over ids j = first, first + step, ... < n. zs(j), ts(j): fp32 logits.
template <class Z, class T>
SLMOPS_HD void lse_pass(const Z& zs, const T& ts, int64_t n, int64_t first, int64_t step, float s, bool need_t,
                        bool need_h, Lse& lz, Lse& lt, Lse& lh) {
  for (int64_t j = first; j < n; j += step) {
    const float z = zs(j);
    lse_push(lz, z * s);
    if (need_t) lse_push(lt, ts(j) * s);
    if (need_h) lse_push(lh, z);
  }
}

// The row constants once pass 1's sums are merged.
SLMOPS_HD KdRow make_kd_row(const KdOptions& o, float grad_scale, Lse lz, Lse lt, Lse lh, bool has_teacher) {
  KdRow r{};
  const float T = o.temperature;
  r.div = effective_divergence(o);
  r.hard = o.hard_weight > 0.0f;
  r.soft = o.hard_weight < 1.0f && has_teacher;
  r.s = 1.0f / T;
  r.ls = lse_value(lz);
  r.lt = r.soft ? lse_value(lt) : 0.0f;
  r.lh = r.hard ? (T == 1.0f ? r.ls : lse_value(lh)) : 0.0f;
  r.beta = o.beta;
  r.log_b = logf(o.beta);
  r.log_b1 = log1pf(-o.beta);
  const float f = o.scale_t2 ? T * T : 1.0f;
  r.coef = (1.0f - o.hard_weight) * f * grad_scale * r.s;
  r.hcoef = r.hard ? o.hard_weight * grad_scale : 0.0f;
  return r;
}

// The hard term's share of d loss / d z_j (without the -hcoef at the label).
SLMOPS_HD float hard_grad(const KdRow& r, float z) { return r.hard ? r.hcoef * hd_exp(log_prob(z, 1.0f, r.lh)) : 0.0f; }

// log m of JSD's mixture, m = beta p + (1 - beta) q, from log p and log q.
SLMOPS_HD float log_mixture(const KdRow& r, float lp, float lq) {
  const float a = lp + r.log_b, b = lq + r.log_b1, hi = a > b ? a : b, lo = a > b ? b : a;
  return hi + log1pf(hd_exp(lo - hi));
}

// Pass 2: adds the soft loss of ids j = first, first + step, ... to *soft and, for
// reverse KL / JSD, the sum their gradient needs to *kl (KL(q || p), KL(q || m)). Forward
// KL also writes the gradient: store(j, g) (the label's -hcoef is the caller's).
template <class Z, class T, class G>
SLMOPS_HD void soft_pass(const KdRow& r, const Z& zs, const T& ts, int64_t n, int64_t first, int64_t step,
                         bool write_grad, const G& store, double* soft, double* kl) {
  double acc = 0.0, acc_q = 0.0;
  for (int64_t j = first; j < n; j += step) {
    const float z = zs(j), lq = log_prob(z, r.s, r.ls), lp = log_prob(ts(j), r.s, r.lt);
    if (r.div == Divergence::kForwardKl) {
      const float p = hd_exp(lp);
      acc += double(p) * (lp - lq);
      if (write_grad) store(j, r.coef * (hd_exp(lq) - p) + hard_grad(r, z));
    } else if (r.div == Divergence::kReverseKl) {
      acc += double(hd_exp(lq)) * (lq - lp);
    } else {
      const float lm = log_mixture(r, lp, lq);
      acc += double(hd_exp(lp)) * (lp - lm);
      acc_q += double(hd_exp(lq)) * (lq - lm);
    }
  }
  if (r.div == Divergence::kJsd) {
    *soft += double(r.beta) * acc + (1.0 - double(r.beta)) * acc_q;
    *kl += acc_q;
  } else {
    *soft += acc;
    *kl += acc;
  }
}

// Pass 3: the gradient of ids j = first, first + step, ... for reverse KL and JSD (kl
// from pass 2), or of the hard term alone when the row has no soft term.
template <class Z, class T, class G>
SLMOPS_HD void grad_pass(const KdRow& r, const Z& zs, const T& ts, int64_t n, int64_t first, int64_t step, float kl,
                         const G& store) {
  for (int64_t j = first; j < n; j += step) {
    const float z = zs(j);
    float g = hard_grad(r, z);
    if (r.soft) {
      const float lq = log_prob(z, r.s, r.ls), lp = log_prob(ts(j), r.s, r.lt);
      if (r.div == Divergence::kReverseKl)
        g += r.coef * hd_exp(lq) * ((lq - lp) - kl);
      else
        g += r.coef * (1.0f - r.beta) * hd_exp(lq) * ((lq - log_mixture(r, lp, lq)) - kl);
    }
    store(j, g);
  }
}

// Which passes a row needs after pass 1.
SLMOPS_HD bool grad_in_soft_pass(const KdRow& r) { return r.soft && r.div == Divergence::kForwardKl; }

}  // namespace slmops::cuda
