// Built instead of the CUDA sources when CUDA is off, so callers link either way.
#include <stdexcept>

#include "slmops/cuda.h"

namespace slmops::cuda {
namespace {
[[noreturn]] void no_cuda() {
  throw std::runtime_error("slmops was built without CUDA; rebuild with SLMOPS_WITH_CUDA=ON and nvcc on PATH");
}
}  // namespace

bool compiled() { return false; }
int device_count() { return 0; }
std::string architectures() { return ""; }
void dequantize(const QuantSpec&, ConstQuantStorage, int64_t, int64_t, void*, DType, void*) { no_cuda(); }
void qmatmul(const QuantSpec&, ConstQuantStorage, int64_t, int64_t, const void*, DType, int64_t, const float*, void*,
             QMatmulActivation, CudaQMatmulPath, void*) {
  no_cuda();
}
void kd_loss_fwd_bwd(const KdOptions&, const void*, DType, int64_t, int64_t, const CudaKdTeacher&, const int64_t*,
                     float, float*, void*, void*) {
  no_cuda();
}
void fused_linear_kd_loss(const KdOptions&, const void*, const void*, DType, int64_t, int64_t, int64_t,
                          const CudaKdTeacher&, const int64_t*, float, float*, float*, float*, int64_t, void*) {
  no_cuda();
}

}  // namespace slmops::cuda
