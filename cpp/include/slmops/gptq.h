// The linear algebra of calibrated compression (GPTQ, and SparseGPT after it): Hessian
// accumulation, the upper Cholesky factor of the inverse Hessian, and GPTQ's blocked column
// loop. Float32, row-major; parallel with OpenMP, the large products through sgemm (oneDNN
// when built with it). Each has a plain scalar reference in slmops::ref for the tests.
#pragma once

#include <cstdint>

#include "slmops/gemm.h"

namespace slmops {

// H [K, K] += X^T X for the rows of X [n, K] (row stride ldx): both triangles. H must be
// symmetric on entry (zeros, or an earlier sum): the upper triangle is computed and mirrored.
void hessian_accumulate(float* H, const float* X, int64_t n, int64_t K, int64_t ldx);

// In place: a symmetric positive definite H [K, K] becomes U, the upper-triangular
// Cholesky factor of its inverse (H^-1 = U^T U, positive diagonal); the strict lower
// triangle is set to zero. Throws std::domain_error if H is not positive definite.
void cholesky_inverse_upper(float* H, int64_t K);

// The quantization grid of one group of weights, with the conventions of slmops.quantize
// (so the result is an int4/int8 QuantizedTensor): value = (code - zero) * scale.
//   bits 8, symmetric:   scale = absmax / 127, zero 128, codes in [1, 255] (int8 [-127, 127])
//   bits 2-4, symmetric: scale = signed absmax / -2^(bits-1), zero 2^(bits-1), codes [0, 2^bits - 1]
//   asymmetric:          scale = (max(x, 0) - min(x, 0)) / (2^bits - 1), zero = round(-min / scale)
// Rounding is half to even, by multiplying with 1 / scale as the RTN kernels do.
// With mse, the range (absmax, or min and max) is shrunk by the factor p in 1.00, 0.99, ...,
// 0.21 that gives the group the least squared rounding error (GPTQ's Quantizer with
// mse=True searches the same grid with |error|^2.4; the square measured better here).
struct GptqGrid {
  int bits = 4;
  bool symmetric = true;
  int64_t group_size = 0;  // 0: one group per row
  bool mse = false;
};

// Scales and zeros [N, groups] of W [N, K] for contiguous groups (what RTN would pick).
void gptq_grid_params(const float* W, int64_t N, int64_t K, const GptqGrid& grid, float* scales, uint8_t* zeros);

// GPTQ (Frantar et al.) with lazy batch updates of `block` columns. W [N, K] in processing
// order is replaced by its quantized values; U [K, K] from cholesky_inverse_upper of the
// Hessian in the same order; codes [N, K] uint8 out. With col_group (int32 [K], the group
// of each processed column), scales/zeros [N, groups] are inputs computed beforehand
// (static groups, act-order); without it, groups are contiguous runs of group_size
// processed columns whose parameters are computed from the error-updated weights when
// the group starts, and are written to scales/zeros. group_size 0 needs col_group.
void gptq_quantize(float* W, int64_t N, int64_t K, const float* U, const GptqGrid& grid, const int32_t* col_group,
                   float* scales, uint8_t* zeros, uint8_t* codes, int64_t block = 128);

// What SparseGPT prunes: with m > 0, an n:m pattern (n of every m consecutive weights of
// a row kept: 2:4, 4:8); with m == 0, the fraction `sparsity` of every block of columns,
// chosen over all its rows at once (the published rule: rows keep different shares).
struct SparsePattern {
  float sparsity = 0.5f;
  int n = 0, m = 0;
};

// SparseGPT (Frantar & Alistarh, 2023) on GPTQ's blocked column loop: W [N, K] (in Hessian
// order, U from cholesky_inverse_upper) loses the weights with the smallest w^2 / U_jj^2
// (chosen from the error-updated weights at the start of each block, or of each n:m
// set), and the error of removing them is spread over the later columns. mask [N, K] out:
// 1 kept, 0 pruned. With grid (joint quantization) the kept weights are also quantized as
// gptq_quantize does with contiguous groups (scales/zeros [N, groups] and codes [N, K]
// out; a pruned weight gets the zero code, value 0); without it those may be null.
void sparsegpt_prune(float* W, int64_t N, int64_t K, const float* U, const SparsePattern& pattern, const GptqGrid* grid,
                     float* scales, uint8_t* zeros, uint8_t* codes, uint8_t* mask, int64_t block = 128);

namespace ref {
void hessian_accumulate(float* H, const float* X, int64_t n, int64_t K, int64_t ldx);
void cholesky_inverse_upper(float* H, int64_t K);
// Column by column, every remaining column updated at once (no lazy batches).
void gptq_quantize(float* W, int64_t N, int64_t K, const float* U, const GptqGrid& grid, const int32_t* col_group,
                   float* scales, uint8_t* zeros, uint8_t* codes);
// Column by column, the mask chosen at the same points as the blocked loop (block 128).
void sparsegpt_prune(float* W, int64_t N, int64_t K, const float* U, const SparsePattern& pattern, const GptqGrid* grid,
                     float* scales, uint8_t* zeros, uint8_t* codes, uint8_t* mask);
}  // namespace ref

}  // namespace slmops
