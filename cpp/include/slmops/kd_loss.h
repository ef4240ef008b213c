// Knowledge-distillation losses, forward and backward in one pass over the logits.
//
// Per row (a token position), with T the temperature, s = 1 / T, student logits z and
// teacher logits t over a vocabulary of n ids:
//   q = softmax(z / T), p = softmax(t / T)
//   forward KL   KL(p || q) = sum p (log p - log q)
//   reverse KL   KL(q || p) = sum q (log q - log p)
//   JSD(beta)    beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q;
//                beta 0 is forward KL and beta 1 reverse KL (as in TRL and Liger-Kernel)
//   row loss     (1 - hard_weight) * f * soft + hard_weight * CE(softmax(z), label)
// where f = T^2 when scale_t2 (Hinton et al.: keeps the size of the gradient independent of
// T) and 1 otherwise. The cross entropy uses the untempered student logits.
//
// Vocabularies: the first min(V_student, V_teacher) ids of both sides are compared (both
// softmaxes run over them); student ids beyond get a zero gradient. Qwen-family heads
// differ only by padding rows past the real vocabulary, so this drops the padding.
//
// A top-k teacher gives k (id, log-probability) pairs per row, log-probabilities at
// temperature 1 over the teacher's full vocabulary. The mass outside the k ids,
// 1 - sum exp(logprob), becomes one extra "tail" category; the student's tail is the mass
// of its softmax outside the same ids. The divergence runs over these k + 1 categories;
// at T != 1 the teacher's k + 1 log-probabilities are re-tempered as one distribution
// (exact at T = 1). The student still needs its whole row: its gradient is dense.
//
// NaN in, NaN out: a row whose compared student or teacher logits hold NaN or +Inf, or
// whose top-k log-probabilities hold NaN, gets a NaN loss and a NaN gradient over the
// compared ids (on every ISA, the oracle and the CUDA kernels). -Inf logits are valid:
// probability 0.
//
// All arithmetic is fp32 with exp/log vectorized; the row losses are summed in double.
#pragma once

#include <cstdint>

#include "slmops/cpu_features.h"
#include "slmops/dtype.h"

namespace slmops {

enum class Divergence : int { kForwardKl = 0, kReverseKl = 1, kJsd = 2 };

struct KdOptions {
  Divergence divergence = Divergence::kForwardKl;
  float temperature = 1.0f;
  float beta = 0.5f;         // JSD only
  bool scale_t2 = true;      // multiply the soft term by T^2
  float hard_weight = 0.0f;  // weight of the hard-label cross entropy, in [0, 1]
  int64_t ignore_index = -100;
};

// The teacher in one of three forms (exactly one set):
//  - logits [rows, vocab] of `dtype`
//  - top-k: ids [rows, k] int64 and log-probabilities [rows, k] fp32
//  - hidden [rows, hidden_size] fp32 and head [vocab, hidden_size] fp32 (fused loss only)
struct KdTeacher {
  const void* logits = nullptr;
  DType dtype = DType::kF32;
  int64_t vocab = 0;
  const int64_t* topk_ids = nullptr;
  const float* topk_logprobs = nullptr;
  int64_t k = 0;
  const float* hidden = nullptr;
  const float* head = nullptr;
  int64_t hidden_size = 0;
};

// student [rows, vocab] of `dtype`; labels [rows] (nullptr: every row counts; required when
// hard_weight > 0); rows whose label is ignore_index count nothing. loss_rows [rows] gets
// each row's loss (0 for ignored rows). grad, if not nullptr, [rows, vocab] of `dtype`, gets
// grad_scale * d(row loss) / d(student logits). Throws std::invalid_argument on bad
// options or a label / top-k id out of range, naming the row.
void kd_loss_fwd_bwd(const KdOptions& opt, const void* student, DType dtype, int64_t rows, int64_t vocab,
                     const KdTeacher& teacher, const int64_t* labels, float grad_scale, float* loss_rows, void* grad,
                     CpuIsa isa = CpuIsa::kAuto);

// The same loss on logits = hidden [rows, H] @ weight [vocab, H]^T (fp32), never holding
// more than `chunk_rows` rows of logits (0: chosen from the shapes): per chunk the logits
// are computed, turned into their gradient in place, and pushed through the two products.
// d_hidden [rows, H] is written, d_weight [vocab, H] accumulated (+=); either may be nullptr.
void fused_linear_kd_loss(const KdOptions& opt, const float* hidden, const float* weight, int64_t rows, int64_t H,
                          int64_t vocab, const KdTeacher& teacher, const int64_t* labels, float grad_scale,
                          float* loss_rows, float* d_hidden, float* d_weight, int64_t chunk_rows = 0,
                          CpuIsa isa = CpuIsa::kAuto);

// The chunk fused_linear_kd_loss picks: the most rows, a power of two, whose fp32 logits fit
// in 64 MB (2^24 values), at least 16 and at most `rows`. Large enough that the products run
// at full GEMM speed on a CPU (at 128 rows they are 30% slower), small against the logits.
int64_t fused_kd_chunk_rows(int64_t rows, int64_t vocab);

namespace ref {
// Scalar, double-precision oracle of kd_loss_fwd_bwd (fp32 student/teacher, fp32 grad).
void kd_loss_fwd_bwd(const KdOptions& opt, const float* student, int64_t rows, int64_t vocab, const KdTeacher& teacher,
                     const int64_t* labels, float grad_scale, float* loss_rows, float* grad);
}  // namespace ref

}  // namespace slmops
