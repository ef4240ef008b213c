// CUDA kernels. Declared always; defined in cpp/src/cuda/ when the build has CUDA and
// in cpp/src/cuda/cuda_stub.cpp otherwise, where every entry point throws.
#pragma once

#include <cstdint>
#include <string>

#include "slmops/dtype.h"
#include "slmops/kd_loss.h"
#include "slmops/qmatmul.h"
#include "slmops/quant.h"

namespace slmops::cuda {

bool compiled();              // this build has CUDA kernels
int device_count();           // GPUs visible now; 0 without CUDA or without a GPU
std::string architectures();  // CMAKE_CUDA_ARCHITECTURES of the build, "" without CUDA

// Dequantizes src (device pointers, layout of quant_layout) into dst [rows, K] on the
// GPU, enqueued on `stream` (a cudaStream_t; nullptr = legacy default stream).
// Throws std::runtime_error on a CUDA error, std::invalid_argument on bad arguments.
void dequantize(const QuantSpec& spec, ConstQuantStorage src, int64_t rows, int64_t K, void* dst, DType dst_dtype,
                void* stream);

// ---- quantized matmul -----------------------------------------------------------------
// How a quantized matmul runs on the GPU:
//   kGemv: decode (M <= kCudaGemvMaxRows), int4 / nf4 / int8: weights read once, decoded
//     in registers (memory-bound: the target is the copy bandwidth).
//   kTensorCore: fp16 / bf16 activations, int4 / nf4 / int8: weight tiles dequantized into
//     shared memory and multiplied on the tensor cores (wmma), split-K for small M.
//   kDequantizeGemm: any format and dtype: the weight is dequantized into a scratch
//     buffer of the activations' dtype and multiplied by cuBLASLt (fp32 stays full fp32).
// W8A8 is not a path but the activation mode kInt8Row (int8 per-row weights only).
enum class CudaQMatmulPath : int { kAuto = 0, kGemv = 1, kTensorCore = 2, kDequantizeGemm = 3 };
constexpr int64_t kCudaGemvMaxRows = 8;
// Up to this many activation rows kAuto prefers the tensor-core kernel to dequantize +
// cuBLASLt: above it the weight is reused by enough rows that cuBLAS's GEMM wins.
constexpr int64_t kCudaTensorCoreMaxRows = 256;

// The path kAuto takes on a GPU of `compute_capability` (10 * major + minor). Host logic:
// callable and tested without a GPU.
CudaQMatmulPath choose_qmatmul_path(const QuantSpec& spec, DType dtype, int64_t M, int compute_capability);
// Whether the tensor-core kernel runs this format and dtype there (bf16 needs sm_80).
bool tensor_core_supported(const QuantSpec& spec, DType dtype, int compute_capability);
// Split-K factor of the tensor-core kernel for y [M, N], K on `sm_count` SMs.
int tensor_core_split_k(int64_t M, int64_t N, int64_t K, int sm_count);

// y [M, N] = x [M, K] @ W^T + bias on the GPU: W [N, K] in its quant_layout storage, x and
// y of `dtype`, bias N floats or nullptr, all device pointers; enqueued on `stream`.
// act kFloat or kInt8Row (W8A8); kInt8 (block-quantized activations) is a CPU mode.
// Throws std::invalid_argument on bad arguments or a path that cannot run this problem.
void qmatmul(const QuantSpec& spec, ConstQuantStorage w, int64_t N, int64_t K, const void* x, DType dtype, int64_t M,
             const float* bias, void* y, QMatmulActivation act, CudaQMatmulPath path, void* stream);

// ---- distillation losses ----------------------------------------------------------------
// The teacher on the GPU, in the student's dtype: logits [rows, vocab], or (fused loss
// only) hidden states [rows, hidden_size] and head [vocab, hidden_size]; none for plain
// cross entropy (hard_weight 1). Top-k teachers are a CPU feature.
struct CudaKdTeacher {
  const void* logits = nullptr;
  const void* hidden = nullptr;
  const void* head = nullptr;
  int64_t vocab = 0;
  int64_t hidden_size = 0;
};

// kd_loss_fwd_bwd (kd_loss.h) on device pointers: student and grad [rows, vocab] of
// `dtype` (grad may be nullptr), labels int64 [rows] or nullptr, loss_rows fp32 [rows].
// Labels are not range-checked on the host (they live on the GPU): a row whose label is
// out of range gets a NaN loss (the Python layer checks labels before calling).
void kd_loss_fwd_bwd(const KdOptions& opt, const void* student, DType dtype, int64_t rows, int64_t vocab,
                     const CudaKdTeacher& teacher, const int64_t* labels, float grad_scale, float* loss_rows,
                     void* grad, void* stream);

// fused_linear_kd_loss (kd_loss.h) on the GPU: hidden [rows, H] and weight [vocab, H] of
// `dtype`; chunks of chunk_rows rows (0: fused_kd_chunk_rows) through cuBLASLt. d_hidden
// fp32 [rows, H] is written, d_weight fp32 [vocab, H] accumulated (+=); either may be null.
void fused_linear_kd_loss(const KdOptions& opt, const void* hidden, const void* weight, DType dtype, int64_t rows,
                          int64_t H, int64_t vocab, const CudaKdTeacher& teacher, const int64_t* labels,
                          float grad_scale, float* loss_rows, float* d_hidden, float* d_weight, int64_t chunk_rows,
                          void* stream);

}  // namespace slmops::cuda
