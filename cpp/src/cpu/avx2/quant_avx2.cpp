// Quantization row kernels for avx2: quant_simd.inc compiled with this ISA's flags
// (set on this file only, in CMakeLists.txt) inside its own namespace, so no inline
// function built with these flags can be merged into another ISA's code.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/half.h"
#include "cpu/quant_common.h"
#include "cpu/row_kernels.h"

namespace slmops::cpu::avx2 {
#include "cpu/simd/vec_avx2.h"
// The kernels, written in the vector layer above: it must come first.
#include "cpu/simd/quant_simd.inc"
}  // namespace slmops::cpu::avx2
