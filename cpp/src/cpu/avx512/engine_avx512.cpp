// Engine row passes for avx512: engine_simd.inc compiled with this ISA's flags (set on this
// file only, in CMakeLists.txt) inside its own namespace.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/half.h"
#include "cpu/engine_kernels.h"

namespace slmops::cpu::avx512 {
#include "cpu/simd/vec_avx512.h"
// The kernels, written in the vector layer above: it must come first.
#include "cpu/simd/engine_simd.inc"
}  // namespace slmops::cpu::avx512
