// oneDNN's int8 matmul, for W8A8 with per-token activation scales. Declared always; when
// slmops is built without oneDNN, available() is false and the call throws.
#pragma once

#include <cstdint>

namespace slmops::onednn {

bool available();

// dst [M, N] int32 = src [M, K] int8 (row stride lds) @ wei^T, wei [N, K] int8 row-major.
// Exact integer products and sums. Primitives are cached by shape; thread-safe.
void matmul_s8s8s32(const int8_t* src, int64_t M, int64_t K, int64_t lds, const int8_t* wei, int64_t N, int32_t* dst);

}  // namespace slmops::onednn
