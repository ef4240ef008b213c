// Sparse matmul kernels for avx512: spmm_simd.inc compiled with this ISA's flags (set on this
// file only, in CMakeLists.txt) inside its own namespace.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/spmm_kernels.h"

namespace slmops::cpu::avx512 {
#include "cpu/simd/vec_avx512.h"
#include "cpu/simd/spmm_simd.inc"
}  // namespace slmops::cpu::avx512
