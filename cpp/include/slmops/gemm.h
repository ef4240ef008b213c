// Dense fp32 matrix products for the kernels that are GEMM-bound (GPTQ, SparseGPT, the
// fused linear distillation loss).
#pragma once

#include <cstdint>

namespace slmops {

// C [M, N] = alpha * op(A) @ op(B) + beta * C, row-major; op(A) is [M, K] (A^T when
// trans_a), op(B) is [K, N]. oneDNN's sgemm when slmops is built with it, else ours.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace slmops
