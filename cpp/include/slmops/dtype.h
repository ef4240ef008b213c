// Element types that cross the kernel boundary.
#pragma once

#include <cstdint>

namespace slmops {

// Float element types accepted as kernel inputs and produced as kernel outputs.
// Quantized storage has its own fixed types (see quant.h), so it is not listed here.
enum class DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

inline int dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }
const char* dtype_name(DType t);

}  // namespace slmops
