// Sparse matmul kernels for avx2: spmm_simd.inc compiled with this ISA's flags (set on this
// file only, in CMakeLists.txt) inside its own namespace.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/spmm_kernels.h"

namespace slmops::cpu::avx2 {
#include "cpu/simd/vec_avx2.h"
#include "cpu/simd/spmm_simd.inc"
}  // namespace slmops::cpu::avx2
