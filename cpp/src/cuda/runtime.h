// Host-side CUDA plumbing shared by the kernel families: the current device's properties,
// stream-ordered scratch buffers, and GEMMs on cuBLASLt (opened at run time, see libs.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "slmops/dtype.h"

namespace slmops::cuda {

struct DeviceInfo {
  int id = 0;
  int sm_count = 0;
  int compute_capability = 0;  // 10 * major + minor: 80 for an A100, 90 for an H100
};
DeviceInfo current_device();

// A scratch buffer allocated and freed in stream order (cudaMallocAsync / cudaFreeAsync):
// kernels enqueued before the destructor on `stream` may still use it.
class StreamBuffer {
 public:
  StreamBuffer(size_t bytes, cudaStream_t stream);
  ~StreamBuffer();
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  void* get() const { return p_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
  cudaStream_t stream_;
};

// Element types of a GEMM operand.
enum class GemmType : int { kF32, kF16, kBF16, kI8, kI32 };
inline GemmType gemm_type(DType d) {
  return d == DType::kF32 ? GemmType::kF32 : d == DType::kF16 ? GemmType::kF16 : GemmType::kBF16;
}

// A row-major matrix operand: op(X) is X ([rows, cols] as stored, leading dimension ld)
// or its transpose.
struct GemmOperand {
  const void* data;
  GemmType type;
  int64_t ld;
  bool transpose = false;
};

// Row-major C [M, N] = alpha * op(A) [M, K] @ op(B) [K, N] + beta * C on cuBLASLt, on
// `stream`. Float types accumulate in fp32 (full fp32, never TF32); int8 A and B
// accumulate into int32 C (alpha and beta then must be integers). Throws
// std::runtime_error when cuBLASLt is missing or refuses the problem.
void gemm(int64_t M, int64_t N, int64_t K, GemmOperand A, GemmOperand B, void* C, GemmType c_type, int64_t ldc,
          float alpha, float beta, cudaStream_t stream);

// True when cuBLASLt could be opened; otherwise `why` says what to install.
bool cublaslt_available(const char** why = nullptr);

}  // namespace slmops::cuda
