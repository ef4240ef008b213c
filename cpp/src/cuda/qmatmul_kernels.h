// The quantized-matmul kernel families on the GPU and how the dispatcher (qmatmul.cu)
// picks one. Host-only declarations: the kernels live in qgemv.cu, qgemm.cu and w8a8.cu,
// one file per family so each compiles on its own.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/dequant_element.h"
#include "cuda/qgemm_tile.h"
#include "slmops/dtype.h"

namespace slmops::cuda {

// y [M, N] (dtype) = x [M, K] (dtype) @ W^T + bias, M <= kGemvMaxRows; int4, nf4, int8.
void launch_qgemv(QuantFormat f, const QuantRows& w, const void* x, DType dtype, int64_t M, const float* bias, void* y,
                  cudaStream_t stream);

// The tensor-core kernel: kQgemmTile* (qgemm_tile.h) output tiles and K steps; the weight tile is
// dequantized into shared memory and multiplied with wmma (fp16: sm_70+, bf16: sm_80+).
// split_k from tensor_core_split_k (plan.cpp).
void launch_qgemm(QuantFormat f, const QuantRows& w, const void* x, DType dtype, int64_t M, const float* bias, void* y,
                  int split_k, cudaStream_t stream);

// W8A8: x rows quantized to int8 (one absmax/127 scale per row), int8 x int8 -> int32 on
// cuBLASLt, then y = acc * x_scale[m] * w_scale[n] + bias. Per-row int8 weights, K % 4 == 0.
void launch_w8a8(const QuantRows& w, const void* x, DType dtype, int64_t M, const float* bias, void* y,
                 cudaStream_t stream);

}  // namespace slmops::cuda
