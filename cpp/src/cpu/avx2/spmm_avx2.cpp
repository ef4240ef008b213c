// Sparse matmul kernels for avx2: spmm_simd.inc compiled with this ISA's flags (set on this
// file only, in CMakeLists.txt) inside its own namespace.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/spmm_kernels.h"

namespace slmops::cpu::avx2 {
#include "cpu/simd/vec_avx2.h"
// int8 activations run the float kernels on the dequantized rows (no byte-gather kernel yet).
constexpr NmRowsInt8Fn kNmRowsInt8 = nullptr;
#include "cpu/simd/spmm_simd.inc"
}  // namespace slmops::cpu::avx2
