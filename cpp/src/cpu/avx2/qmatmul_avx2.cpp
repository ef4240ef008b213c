// Quantized matmul tiles for avx2: qmatmul_simd.inc compiled with this ISA's flags inside
// its own namespace (see quant_avx2.cpp).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/qmatmul_kernels.h"
#include "cpu/quant_common.h"

namespace slmops::cpu::avx2 {
#include "cpu/simd/vec_avx2.h"
// The kernels, written in the vector layer above: it must come first.
#include "cpu/simd/qmatmul_simd.inc"
}  // namespace slmops::cpu::avx2
