// The row passes of the decode engine besides its matmuls, one table per ISA (ref, avx2,
// avx512). The engine keeps the keys (and values) of one cache block and head as
// contiguous rows [n, d]; an attention pass runs over one such block.
#pragma once

#include <cstdint>

#include "slmops/cpu_features.h"

namespace slmops::cpu {

// The KV cache holds fp32, fp16 (IEEE half) or int8 values; a pass has a version for each.
// In int8 every key (a column of kt) carries its own fp32 scale: scores_i8 gives what
// scores_f32 gives on kt[i * ld + j] * kscale[j]. The value rows' scales are the caller's
// to fold into p (one multiply per probability, not per element).
struct EngineKernels {
  // For the heads of one query that share a kv head (grouped-query attention), with
  // q [heads, d] and out [heads, d] contiguous: each key and value is loaded once for all.
  //
  // s[h * s_stride + j] = scale * sum_i q[h][i] * kt[i * ld + j] for j < n <= ld: one block
  // of keys stored transposed (element i of key j at kt[i * ld + j]), so a vector of W keys
  // meets one broadcast element of q per step. ld is a multiple of 16; lanes past n are
  // read and their results dropped.
  void (*scores_f32)(const float* q, int64_t heads, const float* kt, int64_t n, int64_t ld, int64_t d, float scale,
                     float* s, int64_t s_stride);
  void (*scores_f16)(const float* q, int64_t heads, const uint16_t* kt, int64_t n, int64_t ld, int64_t d, float scale,
                     float* s, int64_t s_stride);
  void (*scores_i8)(const float* q, int64_t heads, const int8_t* kt, const float* kscale, int64_t n, int64_t ld,
                    int64_t d, float scale, float* s, int64_t s_stride);
  // out[h][i] += sum_j p[h * p_stride + j] * values[j * d + i] for the n rows values [n, d].
  void (*accumulate_f32)(const float* p, int64_t p_stride, int64_t heads, const float* values, int64_t n, int64_t d,
                         float* out);
  void (*accumulate_f16)(const float* p, int64_t p_stride, int64_t heads, const uint16_t* values, int64_t n, int64_t d,
                         float* out);
  void (*accumulate_i8)(const float* p, int64_t p_stride, int64_t heads, const int8_t* values, int64_t n, int64_t d,
                        float* out);
  // s[j] = exp(s[j] - max(s)) over n >= 1 scores; returns their sum.
  float (*softmax_exp)(float* s, int64_t n);
  // gate[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i].
  void (*silu_mul)(float* gate, const float* up, int64_t n);
};

const EngineKernels& engine_kernels_for(CpuIsa isa);

namespace ref { const EngineKernels& engine_kernels(); }
#ifdef SLMOPS_HAVE_AVX2
namespace avx2 { const EngineKernels& engine_kernels(); }
#endif
#ifdef SLMOPS_HAVE_AVX512
namespace avx512 { const EngineKernels& engine_kernels(); }
#endif

}  // namespace slmops::cpu
