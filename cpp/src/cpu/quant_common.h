// Format constants shared by the ref and SIMD row kernels. Everything here has internal
// linkage (static / constexpr) so per-ISA translation units never share a definition.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace slmops::cpu {

// c / s, the multiplier that turns values into codes for a scale s, or 0 when s is 0 or so
// small (a group of weights below ~1e-37) that c / s overflows float32: x * Inf made such a
// group's codes Inf/NaN, and their conversion to int undefined behaviour. With 0 every value
// takes the zero value's code, and the group dequantizes to zeros, as an all-zero group does.
static inline float inv_or_zero(float c, float s) {
  const float inv = s != 0.0f ? c / s : 0.0f;
  return std::fabs(inv) <= std::numeric_limits<float>::max() ? inv : 0.0f;
}

// NF4 code values (QLoRA appendix E; bitsandbytes get_4bit_type), index 0..15.
// clang-format off: four codes a row (clang-format would put each on a line of its own)
static constexpr float kNF4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
// clang-format on

// A normalized value v gets the nearest code; ties go to the lower code, so the code
// index is the number of midpoints strictly below v. Computed in constexpr float
// arithmetic, which is exact IEEE, so every ISA compares against the same bits.
struct NF4Midpoints {
  float v[15];
  constexpr NF4Midpoints() : v{} {
    for (int i = 0; i < 15; ++i) v[i] = (kNF4[i] + kNF4[i + 1]) * 0.5f;
  }
};
static constexpr NF4Midpoints kNF4Mid{};

// GGUF block geometry (ggml-common.h).
constexpr int kQK4_0 = 32, kQ4_0Bytes = 18;
constexpr int kQK8_0 = 32, kQ8_0Bytes = 34;
constexpr int kQK_K = 256;
constexpr int kQ4_KBytes = 144;  // d, dmin (fp16), scales[12], qs[128]
constexpr int kQ6_KBytes = 210;  // ql[128], qh[64], scales[16] (int8), d (fp16)
constexpr int kTQ2_0Bytes = 66;  // qs[64], d (fp16)

// Q4_K packs eight 6-bit scales and eight 6-bit mins into 12 bytes (ggml get_scale_min_k4).
static inline void q4k_pack_scales(const uint8_t ls[8], const uint8_t lm[8], uint8_t out[12]) {
  for (int j = 0; j < 4; ++j) {
    out[j] = ls[j];
    out[j + 4] = lm[j];
  }
  for (int j = 4; j < 8; ++j) {
    out[j + 4] = uint8_t((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
    out[j - 4] |= uint8_t((ls[j] >> 4) << 6);
    out[j] |= uint8_t((lm[j] >> 4) << 6);
  }
}
static inline void q4k_unpack_scale(const uint8_t* q, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

}  // namespace slmops::cpu
