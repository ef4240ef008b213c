// Host-side choices of the CUDA kernels, built with or without CUDA so that they are
// tested on any machine.
#include "cuda/qgemm_tile.h"
#include "slmops/cuda.h"

namespace slmops::cuda {
namespace {

bool fused_format(QuantFormat f) {
  return f == QuantFormat::kInt4 || f == QuantFormat::kNF4 || f == QuantFormat::kInt8;
}

}  // namespace

bool tensor_core_supported(const QuantSpec& spec, DType dtype, int compute_capability) {
  return fused_format(spec.format) &&
         ((dtype == DType::kF16 && compute_capability >= 70) || (dtype == DType::kBF16 && compute_capability >= 80));
}

CudaQMatmulPath choose_qmatmul_path(const QuantSpec& spec, DType dtype, int64_t M, int compute_capability) {
  if (fused_format(spec.format) && M <= kCudaGemvMaxRows) return CudaQMatmulPath::kGemv;
  if (M <= kCudaTensorCoreMaxRows && tensor_core_supported(spec, dtype, compute_capability))
    return CudaQMatmulPath::kTensorCore;
  return CudaQMatmulPath::kDequantizeGemm;
}

int tensor_core_split_k(int64_t M, int64_t N, int64_t K, int sm_count) {
  // About two blocks per SM when the output tiles alone are fewer; each split at least
  // 4 K steps deep; at most 16 splits (each adds an fp32 atomic pass over y).
  const int64_t tiles = ((M + kQgemmTileM - 1) / kQgemmTileM) * ((N + kQgemmTileN - 1) / kQgemmTileN);
  const int64_t k_steps = (K + kQgemmTileK - 1) / kQgemmTileK;
  int64_t s = (2 * int64_t(sm_count) + tiles - 1) / tiles;
  if (s > k_steps / 4) s = k_steps / 4;
  if (s > 16) s = 16;
  return s < 1 ? 1 : int(s);
}

}  // namespace slmops::cuda
