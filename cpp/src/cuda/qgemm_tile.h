// The tile of the tensor-core quantized GEMM (qgemm.cu), shared with the host planning
// in plan.cpp (which builds without CUDA).
#pragma once

namespace slmops::cuda {
constexpr int kQgemmTileM = 64, kQgemmTileN = 64, kQgemmTileK = 32;
}  // namespace slmops::cuda
