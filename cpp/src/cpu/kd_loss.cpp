// The distillation loss drivers: validate, pick the row passes once, split rows over
// threads (per-thread fp32 buffers for fp16/bf16 rows and the stash of the two-pass
// divergences), and for the fused loss walk the rows in chunks through sgemm.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/isa_dispatch.h"
#include "cpu/kd_kernels.h"
#include "cpu/row_kernels.h"
#include "slmops/gemm.h"
#include "slmops/kd_loss.h"
#include "slmops/threading.h"

namespace slmops {

const cpu::KdKernels& cpu::kd_kernels_for(CpuIsa isa) {
  return kernels_for_isa<KdKernels>(isa, SLMOPS_CPU_ISA_KERNELS(kd_kernels));
}

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

void validate(const KdOptions& opt, int64_t rows, int64_t vocab, const KdTeacher& t, const int64_t* labels,
              bool fused) {
  if (rows < 0 || vocab <= 0) fail("kd loss: rows must be >= 0 and vocab > 0");
  if (!(opt.temperature > 0.0f) || !std::isfinite(opt.temperature))
    fail("temperature must be a positive finite number, got " + std::to_string(opt.temperature));
  if (!(opt.beta >= 0.0f && opt.beta <= 1.0f)) fail("beta must be in [0, 1], got " + std::to_string(opt.beta));
  if (!(opt.hard_weight >= 0.0f && opt.hard_weight <= 1.0f))
    fail("hard_weight must be in [0, 1], got " + std::to_string(opt.hard_weight));
  if (opt.hard_weight > 0.0f && !labels) fail("hard_weight > 0 needs labels (the hard targets)");
  const int forms = (t.logits != nullptr) + (t.topk_ids != nullptr) + (t.hidden != nullptr);
  // No teacher at all is plain cross entropy on the labels (fine-tuning): hard_weight 1.
  if (forms == 0 && opt.hard_weight != 1.0f)
    fail("without a teacher (logits, top-k or hidden states) the loss is cross entropy only: hard_weight must be 1");
  if (forms > 1) fail("the teacher must be given as exactly one of: logits, top-k, hidden states");
  if (t.hidden && !fused) fail("teacher hidden states need the fused loss (they need the teacher's head)");
  if ((t.logits || t.hidden) && t.vocab <= 0) fail("teacher vocab must be > 0");
  if (t.hidden && (!t.head || t.hidden_size <= 0)) fail("teacher hidden states need head [vocab, hidden_size]");
  if (t.topk_ids && (!t.topk_logprobs || t.k <= 0 || t.k >= vocab))
    fail("top-k teacher needs ids and log-probabilities with 0 < k < vocab, got k = " + std::to_string(t.k));
}

// The row's top-k ids: in range, no repeats; their log-probabilities: total mass <= 1.
void check_topk_row(const int64_t* ids, const float* lv, int64_t k, int64_t vocab, int64_t row,
                    std::vector<int64_t>& sorted) {
  sorted.assign(ids, ids + k);
  std::sort(sorted.begin(), sorted.end());
  if (sorted.front() < 0 || sorted.back() >= vocab)
    fail("top-k teacher ids of row " + std::to_string(row) + " must be in [0, " + std::to_string(vocab) + "), got " +
         std::to_string(sorted.front() < 0 ? sorted.front() : sorted.back()));
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
    fail("top-k teacher ids of row " + std::to_string(row) + " repeat an id");
  double mass = 0.0;
  for (int64_t i = 0; i < k; ++i) mass += std::exp(double(lv[i]));
  if (mass > 1.0 + 1e-3)
    fail("top-k teacher log-probabilities of row " + std::to_string(row) + " sum to probability " +
         std::to_string(mass) + " > 1: pass log-probabilities (log_softmax), not logits");
}

Divergence effective(const KdOptions& opt) {
  if (opt.divergence == Divergence::kJsd && opt.beta == 0.0f) return Divergence::kForwardKl;
  if (opt.divergence == Divergence::kJsd && opt.beta == 1.0f) return Divergence::kReverseKl;
  return opt.divergence;
}

struct TopkRow {
  const int64_t* ids;
  const float* logprobs;
  int64_t k;
};

// The soft loss of one row against a top-k teacher, over the k ids and the tail (see
// kd_loss.h). With g_c = d loss / d lq_c (lq free), the gradient w.r.t. u = z / T is
// q_j (sum_tail_term - sum_S g) everywhere plus g_i - (g_tail / q_tail) q_i on the ids.
// Returns the loss; *dense is the factor of q_j, sparse[i] the correction at ids[i].
double topk_soft(const KdOptions& opt, const float* z, float s, float ls, const TopkRow& tk, double* dense,
                 std::vector<double>& sparse) {
  const int64_t k = tk.k;
  const double T = opt.temperature;
  const Divergence div = effective(opt);
  const double beta = opt.beta;
  std::vector<double> lp(static_cast<size_t>(k + 1)), lq(static_cast<size_t>(k + 1));
  double mass = 0.0, qs = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    mass += std::exp(double(tk.logprobs[i]));
    lq[size_t(i)] = double(z[tk.ids[i]]) * s - ls;
    qs += std::exp(lq[size_t(i)]);
  }
  lq[size_t(k)] = std::log(std::max(1.0 - qs, 1e-30));
  // the teacher's k + 1 log-probabilities, re-tempered as one distribution
  double mx = std::log(std::max(1.0 - mass, 1e-30)) / T;
  lp[size_t(k)] = mx;
  for (int64_t i = 0; i < k; ++i) mx = std::max(mx, lp[size_t(i)] = double(tk.logprobs[i]) / T);
  double d = 0.0;
  for (double v : lp) d += std::exp(v - mx);
  const double norm = mx + std::log(d);
  double loss = 0.0, g_ids = 0.0, g_tail = 0.0;
  sparse.assign(size_t(k), 0.0);
  for (int64_t c = 0; c <= k; ++c) {
    const double l_p = lp[size_t(c)] - norm, l_q = lq[size_t(c)], p = std::exp(l_p), q = std::exp(l_q);
    double g;
    if (div == Divergence::kForwardKl) {
      loss += p > 0 ? p * (l_p - l_q) : 0.0;
      g = -p;
    } else if (div == Divergence::kReverseKl) {
      loss += q * (l_q - l_p);
      g = q * (l_q - l_p + 1.0);
    } else {
      const double l_m = std::log(beta * p + (1.0 - beta) * q);
      loss += (p > 0 ? beta * p * (l_p - l_m) : 0.0) + (1.0 - beta) * q * (l_q - l_m);
      g = (1.0 - beta) * q * (l_q - l_m);
    }
    if (c < k) {
      sparse[size_t(c)] = g;
      g_ids += g;
    } else {
      g_tail = g / std::exp(l_q);
    }
  }
  *dense = -g_ids + g_tail * qs;
  for (int64_t i = 0; i < k; ++i) sparse[size_t(i)] -= g_tail * std::exp(lq[size_t(i)]);
  return loss;
}

struct RowScratch {
  std::vector<float> stash;
  std::vector<double> sparse;
  std::vector<int64_t> sorted;
};

// One row's loss; grad (fp32, `vocab` entries, may be the same buffer as z) gets
// grad_scale * d loss / d z when not null. n: the compared vocabulary (<= vocab).
double kd_row(const cpu::KdKernels& kk, const KdOptions& opt, const float* z, int64_t vocab, int64_t n, const float* t,
              const TopkRow* tk, int64_t label, float grad_scale, float* grad, RowScratch& sc) {
  const float T = opt.temperature, s = 1.0f / T;
  const float hw = opt.hard_weight, sw = 1.0f - hw;
  const float f = opt.scale_t2 ? T * T : 1.0f;
  const bool hard = hw > 0.0f;
  const float ls = kk.lse(z, n, s);
  const float lh = hard ? (T == 1.0f ? ls : kk.lse(z, n, 1.0f)) : 0.0f;
  const float hcoef = hard ? hw * grad_scale : 0.0f;
  const float zy = hard ? z[label] : 0.0f;  // read before grad may overwrite z
  const float coef = sw * f * grad_scale * s;
  double soft = 0.0;
  if (sw == 0.0f) {
    if (grad) kk.softmax_grad(z, n, 1.0f, lh, hcoef, 0.0f, 0.0f, grad);
  } else if (tk) {
    double dense;
    soft = topk_soft(opt, z, s, ls, *tk, &dense, sc.sparse);
    if (grad) {
      kk.softmax_grad(z, n, s, ls, float(coef * dense), hcoef, lh, grad);
      for (int64_t i = 0; i < tk->k; ++i) grad[tk->ids[i]] += float(coef * sc.sparse[size_t(i)]);
    }
  } else {
    const float lt = kk.lse(t, n, s);
    float* stash = grad ? sc.stash.data() : nullptr;
    switch (effective(opt)) {
      case Divergence::kForwardKl: soft = kk.forward_kl(z, t, n, s, ls, lt, coef, hcoef, lh, grad); break;
      case Divergence::kReverseKl: {
        const float kl = kk.reverse_kl(z, t, n, s, ls, lt, stash);
        if (grad) kk.stash_grad(z, stash, n, s, ls, kl, coef, hcoef, lh, grad);
        soft = kl;
        break;
      }
      case Divergence::kJsd: {
        float kl_qm;
        soft = kk.jsd(z, t, n, s, ls, lt, opt.beta, stash, &kl_qm);
        if (grad) kk.stash_grad(z, stash, n, s, ls, kl_qm, coef * (1.0f - opt.beta), hcoef, lh, grad);
        break;
      }
    }
  }
  double loss = double(sw) * f * soft;
  if (hard) {
    loss += double(hw) * (double(lh) - zy);
    if (grad) grad[label] -= hcoef;
  }
  if (grad) std::fill(grad + n, grad + vocab, 0.0f);
  return loss;
}

// Per-thread row loop shared by both entry points. student_row(r, buf) returns row r of the
// student logits as fp32 (buf is a vocab-sized scratch it may use); grad_row(r) the fp32
// buffer for the row's gradient (or nullptr); finish(r) stores it.
template <class StudentRow, class TeacherRow, class GradRow, class Finish>
void rows_loop(const cpu::KdKernels& kk, const KdOptions& opt, int64_t r_begin, int64_t r_end, int64_t vocab, int64_t n,
               const KdTeacher& teacher, const int64_t* labels, float grad_scale, float* loss_rows,
               StudentRow student_row, TeacherRow teacher_row, GradRow grad_row, Finish finish) {
  parallel_for(r_end - r_begin, [&](int64_t i0, int64_t i1) {
    RowScratch sc;
    sc.stash.resize(size_t(vocab));
    std::vector<float> zbuf, tbuf;
    for (int64_t r = r_begin + i0; r < r_begin + i1; ++r) {
      float* g = grad_row(r);
      const int64_t label = labels ? labels[r] : 0;
      if (labels && label == opt.ignore_index) {
        loss_rows[r] = 0.0f;
        if (g) std::fill(g, g + vocab, 0.0f);
        finish(r);
        continue;
      }
      if (opt.hard_weight > 0.0f && (label < 0 || label >= n))
        fail("label " + std::to_string(label) + " of row " + std::to_string(r) + " is outside the vocabulary [0, " +
             std::to_string(n) + ") and is not ignore_index " + std::to_string(opt.ignore_index));
      TopkRow tk{};
      if (teacher.topk_ids) {
        tk = TopkRow{teacher.topk_ids + r * teacher.k, teacher.topk_logprobs + r * teacher.k, teacher.k};
        check_topk_row(tk.ids, tk.logprobs, tk.k, vocab, r, sc.sorted);
      }
      const float* z = student_row(r, zbuf);
      const bool dense_teacher = teacher.logits || teacher.hidden;
      const float* t = dense_teacher ? teacher_row(r, tbuf) : nullptr;
      if (cpu::poisons_row(z, n) || (t && cpu::poisons_row(t, n)) || (tk.k && cpu::poisons_row(tk.logprobs, tk.k))) {
        loss_rows[r] = std::numeric_limits<float>::quiet_NaN();
        if (g) {  // NaN over the compared ids; ids past them get no gradient, as always
          std::fill(g, g + n, std::numeric_limits<float>::quiet_NaN());
          std::fill(g + n, g + vocab, 0.0f);
        }
        finish(r);
        continue;
      }
      loss_rows[r] = float(kd_row(kk, opt, z, vocab, n, t, teacher.topk_ids ? &tk : nullptr, label, grad_scale, g, sc));
      finish(r);
    }
  });
}

// The student ids the loss looks at: a dense teacher's vocabulary may be shorter (padding rows).
int64_t compared_vocab(const KdTeacher& teacher, int64_t vocab) {
  return teacher.logits || teacher.hidden ? std::min(vocab, teacher.vocab) : vocab;
}

// fp32 view of row r of a [rows, cols] matrix of `dtype` (converted into buf for halves).
const float* f32_row(const void* base, DType dtype, int64_t r, int64_t cols, std::vector<float>& buf) {
  if (dtype == DType::kF32) return static_cast<const float*>(base) + r * cols;
  const cpu::RowKernels& rk = cpu::row_kernels_for(CpuIsa::kAuto);
  buf.resize(size_t(cols));
  const auto* src = static_cast<const uint16_t*>(base) + r * cols;
  (dtype == DType::kF16 ? rk.f16_to_f32 : rk.bf16_to_f32)(src, cols, buf.data());
  return buf.data();
}

// The fp32 gradient row of the calling thread, for fp16/bf16 gradients.
std::vector<float>& thread_grad_row() {
  thread_local std::vector<float> buf;
  return buf;
}

}  // namespace

void kd_loss_fwd_bwd(const KdOptions& opt, const void* student, DType dtype, int64_t rows, int64_t vocab,
                     const KdTeacher& teacher, const int64_t* labels, float grad_scale, float* loss_rows, void* grad,
                     CpuIsa isa) {
  validate(opt, rows, vocab, teacher, labels, false);
  const cpu::KdKernels& kk = cpu::kd_kernels_for(isa);
  const cpu::RowKernels& rk = cpu::row_kernels_for(CpuIsa::kAuto);
  const int64_t n = compared_vocab(teacher, vocab);
  const bool half_grad = grad && dtype != DType::kF32;
  rows_loop(
      kk, opt, 0, rows, vocab, n, teacher, labels, grad_scale, loss_rows,
      [&](int64_t r, std::vector<float>& buf) { return f32_row(student, dtype, r, vocab, buf); },
      [&](int64_t r, std::vector<float>& buf) { return f32_row(teacher.logits, teacher.dtype, r, teacher.vocab, buf); },
      [&](int64_t r) -> float* {
        if (!grad) return nullptr;
        if (!half_grad) return static_cast<float*>(grad) + r * vocab;
        std::vector<float>& buf = thread_grad_row();
        buf.resize(size_t(vocab));
        return buf.data();
      },
      [&](int64_t r) {
        if (!half_grad) return;
        auto* dst = static_cast<uint16_t*>(grad) + r * vocab;
        (dtype == DType::kF16 ? rk.f32_to_f16 : rk.f32_to_bf16)(thread_grad_row().data(), vocab, dst);
      });
}

int64_t fused_kd_chunk_rows(int64_t rows, int64_t vocab) {
  if (rows < 0 || vocab <= 0)
    fail("fused_kd_chunk_rows: rows must be >= 0 and vocab > 0, got " + std::to_string(rows) + " and " +
         std::to_string(vocab));
  constexpr int64_t kLogitsPerChunk = int64_t(1) << 24;
  int64_t c = 16;
  while (c * 2 <= kLogitsPerChunk / vocab) c *= 2;  // divided, not multiplied: no overflow for huge vocab
  return std::max<int64_t>(1, std::min(c, rows));
}

void fused_linear_kd_loss(const KdOptions& opt, const float* hidden, const float* weight, int64_t rows, int64_t H,
                          int64_t vocab, const KdTeacher& teacher, const int64_t* labels, float grad_scale,
                          float* loss_rows, float* d_hidden, float* d_weight, int64_t chunk_rows, CpuIsa isa) {
  validate(opt, rows, vocab, teacher, labels, true);
  if (H <= 0) fail("hidden size must be > 0");
  if (rows == 0) return;
  const cpu::KdKernels& kk = cpu::kd_kernels_for(isa);
  const int64_t chunk = chunk_rows > 0 ? std::min(chunk_rows, rows) : fused_kd_chunk_rows(rows, vocab);
  const int64_t n = compared_vocab(teacher, vocab);
  const bool want_grad = d_hidden || d_weight;
  std::vector<float> Z(static_cast<size_t>(chunk * vocab));
  std::vector<float> TZ(teacher.hidden ? size_t(chunk * teacher.vocab) : 0);
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t C = std::min(chunk, rows - r0);
    sgemm(false, true, C, vocab, H, 1.0f, hidden + r0 * H, H, weight, H, 0.0f, Z.data(), vocab);
    if (teacher.hidden)
      sgemm(false, true, C, teacher.vocab, teacher.hidden_size, 1.0f, teacher.hidden + r0 * teacher.hidden_size,
            teacher.hidden_size, teacher.head, teacher.hidden_size, 0.0f, TZ.data(), teacher.vocab);
    // The logits chunk becomes its own gradient, row by row, in place.
    rows_loop(
        kk, opt, r0, r0 + C, vocab, n, teacher, labels, grad_scale, loss_rows,
        [&](int64_t r, std::vector<float>&) { return Z.data() + (r - r0) * vocab; },
        [&](int64_t r, std::vector<float>& buf) {
          if (teacher.hidden) return static_cast<const float*>(TZ.data() + (r - r0) * teacher.vocab);
          return f32_row(teacher.logits, teacher.dtype, r, teacher.vocab, buf);
        },
        [&](int64_t r) { return want_grad ? Z.data() + (r - r0) * vocab : nullptr; }, [](int64_t) {});
    if (d_hidden) sgemm(false, false, C, H, vocab, 1.0f, Z.data(), vocab, weight, H, 0.0f, d_hidden + r0 * H, H);
    if (d_weight) sgemm(true, false, vocab, H, C, 1.0f, Z.data(), vocab, hidden + r0 * H, H, 1.0f, d_weight, H);
  }
}

}  // namespace slmops
