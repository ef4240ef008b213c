// The per-head attention passes of the decode engine, one table per ISA (ref, avx2, avx512).
// The engine keeps the keys (and values) of one cache block and head as contiguous rows
// [n, d]; a pass runs over one such block.
#pragma once

#include <cstdint>

#include "slmops/cpu_features.h"

namespace slmops::cpu {

struct AttentionKernels {
  // s[j] = scale * dot(q, keys[j]) for the n rows keys [n, d].
  void (*scores)(const float* q, const float* keys, int64_t n, int64_t d, float scale, float* s);
  // out[i] += sum_j p[j] * values[j][i] for the n rows values [n, d].
  void (*accumulate)(const float* p, const float* values, int64_t n, int64_t d, float* out);
};

const AttentionKernels& attention_kernels_for(CpuIsa isa);

namespace ref { const AttentionKernels& attention_kernels(); }
#ifdef SLMOPS_HAVE_AVX2
namespace avx2 { const AttentionKernels& attention_kernels(); }
#endif
#ifdef SLMOPS_HAVE_AVX512
namespace avx512 { const AttentionKernels& attention_kernels(); }
#endif

}  // namespace slmops::cpu
