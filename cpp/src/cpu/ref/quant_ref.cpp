// Scalar reference kernels: the oracle every optimized kernel is tested against.
// Written for clarity, one element at a time, with the rounding rule of each format
// spelled out:
//   - our own formats (int8, int4, nf4, ternary) round half to even (std::nearbyint in
//     the default rounding mode, the same rule as the SIMD cvtps instructions);
//   - GGUF formats follow ggml's reference quantizers: q4_0 truncates x*id + 8.5,
//     q8_0 and tq2_0 use roundf (half away from zero), k-quants round half to even.
// All-zero groups get scale 0 and the code of value 0; dequantizing gives exact zeros.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/half.h"
#include "cpu/quant_common.h"
#include "cpu/row_kernels.h"

namespace slmops::cpu::ref {
namespace {

int rne(float x) { return int(std::nearbyint(x)); }
int clampi(int v, int lo, int hi) { return std::min(hi, std::max(lo, v)); }

// Value with the largest magnitude, keeping its sign; the first one wins a tie.
float signed_absmax(const float* x, int64_t n) {
  float best = 0.0f, best_abs = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a > best_abs) {
      best_abs = a;
      best = x[i];
    }
  }
  return best;
}
float absmax(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}
void store_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// ---- int8: symmetric, scale = absmax / 127, codes in [-127, 127] ----------------------
void quantize_int8(const float* src, int64_t K, const RowParams& p, RowDst dst) {
  const int64_t G = p.group_size ? p.group_size : K;
  auto* q = reinterpret_cast<int8_t*>(dst.data);
  for (int64_t g0 = 0, gi = 0; g0 < K; g0 += G, ++gi) {
    const int64_t n = std::min(G, K - g0);
    const float scale = absmax(src + g0, n) / 127.0f;
    const float inv = inv_or_zero(1.0f, scale);
    for (int64_t i = 0; i < n; ++i) q[g0 + i] = int8_t(clampi(rne(src[g0 + i] * inv), -127, 127));
    dst.scales[gi] = scale;
  }
}
void dequantize_int8(RowSrc src, int64_t K, const RowParams& p, float* dst) {
  const int64_t G = p.group_size ? p.group_size : K;
  const auto* q = reinterpret_cast<const int8_t*>(src.data);
  for (int64_t i = 0; i < K; ++i) dst[i] = float(q[i]) * src.scales[i / G];
}

// ---- int4, MatMulNBits layout: codes [groups, G/2], element 2i low nibble -------------
// Symmetric: scale = signed_absmax / -8 so the extreme value is exactly code 0 (-8), zero
// point 8. Asymmetric: the range [min(x,0), max(x,0)] over 15 steps, zero point rounded.
void quantize_int4(const float* src, int64_t K, const RowParams& p, RowDst dst) {
  const int64_t G = p.group_size;
  const int64_t groups = (K + G - 1) / G;
  std::memset(dst.data, 0, size_t(groups * G / 2));
  if (!p.symmetric) std::memset(dst.zero_points, 0, size_t((groups + 1) / 2));
  for (int64_t gi = 0; gi < groups; ++gi) {
    const float* x = src + gi * G;
    const int64_t n = std::min(G, K - gi * G);
    float scale;
    int zp;
    if (p.symmetric) {
      scale = signed_absmax(x, n) / -8.0f;
      zp = 8;
    } else {
      float mn = 0.0f, mx = 0.0f;
      for (int64_t i = 0; i < n; ++i) {
        mn = std::min(mn, x[i]);
        mx = std::max(mx, x[i]);
      }
      scale = (mx - mn) / 15.0f;
      const float inv = inv_or_zero(1.0f, scale);
      zp = scale != 0.0f ? clampi(rne(-mn * inv), 0, 15) : 8;
      dst.zero_points[gi / 2] |= uint8_t(zp << ((gi & 1) * 4));
    }
    const float inv = inv_or_zero(1.0f, scale);
    uint8_t* out = dst.data + gi * (G / 2);
    for (int64_t i = 0; i < G; ++i) {
      const int code = i < n ? clampi(rne(x[i] * inv) + zp, 0, 15) : zp;  // pad = value 0
      out[i / 2] |= uint8_t(code << ((i & 1) * 4));
    }
    dst.scales[gi] = scale;
  }
}
void dequantize_int4(RowSrc src, int64_t K, const RowParams& p, float* dst) {
  const int64_t G = p.group_size;
  for (int64_t i = 0; i < K; ++i) {
    const int64_t gi = i / G;
    const int64_t j = i % G;
    const int code = (src.data[gi * (G / 2) + j / 2] >> ((j & 1) * 4)) & 0xF;
    const int zp = p.symmetric ? 8 : (src.zero_points[gi / 2] >> ((gi & 1) * 4)) & 0xF;
    dst[i] = float(code - zp) * src.scales[gi];
  }
}

// ---- nf4: absmax per block, nearest code, element 2i in the HIGH nibble (bitsandbytes) -
int nf4_code(float v) {
  int c = 0;
  for (int i = 0; i < 15; ++i) c += v > kNF4Mid.v[i] ? 1 : 0;
  return c;
}
void quantize_nf4(const float* src, int64_t K, const RowParams& p, RowDst dst) {
  const int64_t B = p.group_size;
  for (int64_t b = 0; b < K / B; ++b) {
    const float* x = src + b * B;
    const float m = absmax(x, B);
    const float inv = inv_or_zero(1.0f, m);
    uint8_t* out = dst.data + b * B / 2;
    for (int64_t i = 0; i < B; i += 2) out[i / 2] = uint8_t(nf4_code(x[i] * inv) << 4 | nf4_code(x[i + 1] * inv));
    dst.scales[b] = m;
  }
}
void dequantize_nf4(RowSrc src, int64_t K, const RowParams& p, float* dst) {
  const int64_t B = p.group_size;
  for (int64_t i = 0; i < K; ++i) {
    const int code = (src.data[i / 2] >> ((i & 1) ? 0 : 4)) & 0xF;
    dst[i] = kNF4[code] * src.scales[i / B];
  }
}

// ---- ternary: codes v+1, four per byte, element i at bits 2*(i%4) ----------------------
void quantize_ternary(const float* src, int64_t K, const RowParams& p, RowDst dst) {
  const float inv = 1.0f / p.tensor_scale;
  const int64_t nbytes = (K + 3) / 4;
  for (int64_t b = 0; b < nbytes; ++b) dst.data[b] = kTernaryPadByte;
  for (int64_t i = 0; i < K; ++i) {
    const int code = clampi(rne(src[i] * inv), -1, 1) + 1;
    uint8_t& byte = dst.data[i / 4];
    const int shift = int(i % 4) * 2;
    byte = uint8_t((byte & ~(3 << shift)) | (code << shift));
  }
}
void dequantize_ternary(RowSrc src, int64_t K, const RowParams&, float* dst) {
  const float s = src.scales[0];
  for (int64_t i = 0; i < K; ++i) {
    const int code = (src.data[i / 4] >> ((i % 4) * 2)) & 3;
    dst[i] = float(code - 1) * s;
  }
}

// ---- GGUF q4_0: {fp16 d, qs[16]}, element j low nibble of qs[j], j+16 high nibble ------
void quantize_q4_0(const float* src, int64_t K, const RowParams&, RowDst dst) {
  for (int64_t b = 0; b < K / kQK4_0; ++b) {
    const float* x = src + b * kQK4_0;
    uint8_t* blk = dst.data + b * kQ4_0Bytes;
    const float d = signed_absmax(x, kQK4_0) / -8.0f;
    const float id = inv_or_zero(1.0f, d);
    store_f16(blk, d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const int lo = std::min(15, int(int8_t(x[j] * id + 8.5f)));
      const int hi = std::min(15, int(int8_t(x[j + 16] * id + 8.5f)));
      blk[2 + j] = uint8_t(lo | (hi << 4));
    }
  }
}
void dequantize_q4_0(RowSrc src, int64_t K, const RowParams&, float* dst) {
  for (int64_t b = 0; b < K / kQK4_0; ++b) {
    const uint8_t* blk = src.data + b * kQ4_0Bytes;
    const float d = load_f16(blk);
    float* y = dst + b * kQK4_0;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * float((blk[2 + j] & 0xF) - 8);
      y[j + 16] = d * float((blk[2 + j] >> 4) - 8);
    }
  }
}

// ---- GGUF q8_0: {fp16 d, int8 qs[32]}, d = absmax/127, roundf --------------------------
void quantize_q8_0(const float* src, int64_t K, const RowParams&, RowDst dst) {
  for (int64_t b = 0; b < K / kQK8_0; ++b) {
    const float* x = src + b * kQK8_0;
    uint8_t* blk = dst.data + b * kQ8_0Bytes;
    const float d = absmax(x, kQK8_0) / 127.0f;
    const float id = inv_or_zero(1.0f, d);
    store_f16(blk, d);
    for (int j = 0; j < kQK8_0; ++j) blk[2 + j] = uint8_t(int8_t(std::roundf(x[j] * id)));
  }
}
void dequantize_q8_0(RowSrc src, int64_t K, const RowParams&, float* dst) {
  for (int64_t b = 0; b < K / kQK8_0; ++b) {
    const uint8_t* blk = src.data + b * kQ8_0Bytes;
    const float d = load_f16(blk);
    for (int j = 0; j < kQK8_0; ++j) dst[b * kQK8_0 + j] = float(int8_t(blk[2 + j])) * d;
  }
}

// ---- GGUF q4_k: 8 sub-blocks of 32, x = d*ls*q - dmin*lm ---------------------------
// Format-valid min/max quantizer: each sub-block spans [min(x,0), max(x)] in 15 steps;
// the 6-bit sub-scales and sub-mins are rounded against the fp16 super-scales and the
// codes are then rounded against the scales the decoder will actually use.
void quantize_q4_k(const float* src, int64_t K, const RowParams&, RowDst dst) {
  for (int64_t b = 0; b < K / kQK_K; ++b) {
    const float* x = src + b * kQK_K;
    uint8_t* blk = dst.data + b * kQ4_KBytes;
    float scale[8], negmin[8];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 8; ++j) {
      float mn = 0.0f, mx = x[32 * j];
      for (int i = 0; i < 32; ++i) {
        mn = std::min(mn, x[32 * j + i]);
        mx = std::max(mx, x[32 * j + i]);
      }
      scale[j] = (mx - mn) / 15.0f;
      negmin[j] = -mn;
      max_scale = std::max(max_scale, scale[j]);
      max_min = std::max(max_min, negmin[j]);
    }
    const float inv_scale = inv_or_zero(63.0f, max_scale);
    const float inv_min = inv_or_zero(63.0f, max_min);
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; ++j) {
      ls[j] = uint8_t(std::min(63, rne(inv_scale * scale[j])));
      lm[j] = uint8_t(std::min(63, rne(inv_min * negmin[j])));
    }
    store_f16(blk, max_scale / 63.0f);
    store_f16(blk + 2, max_min / 63.0f);
    q4k_pack_scales(ls, lm, blk + 4);
    const float d = load_f16(blk), dmin = load_f16(blk + 2);
    uint8_t q[kQK_K];
    for (int j = 0; j < 8; ++j) {
      const float dl = d * float(ls[j]);
      const float ml = dmin * float(lm[j]);
      for (int i = 0; i < 32; ++i)
        q[32 * j + i] = dl != 0.0f ? uint8_t(clampi(rne((x[32 * j + i] + ml) / dl), 0, 15)) : 0;
    }
    uint8_t* qs = blk + 16;
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) qs[32 * c + l] = uint8_t(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
  }
}
void dequantize_q4_k(RowSrc src, int64_t K, const RowParams&, float* dst) {
  for (int64_t b = 0; b < K / kQK_K; ++b) {
    const uint8_t* blk = src.data + b * kQ4_KBytes;
    const float d = load_f16(blk), dmin = load_f16(blk + 2);
    const uint8_t* qs = blk + 16;
    float* y = dst + b * kQK_K;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      q4k_unpack_scale(blk + 4, j, &sc, &m);
      const float dl = d * float(sc), ml = dmin * float(m);
      const int shift = (j & 1) * 4;
      for (int l = 0; l < 32; ++l) y[32 * j + l] = dl * float((qs[32 * (j / 2) + l] >> shift) & 0xF) - ml;
    }
  }
}

// ---- GGUF q6_k: 16 sub-blocks of 16, int8 sub-scales, 6-bit codes q+32 ---------------
// Sub-block scale = signed_absmax / -32 (extreme value exactly -32); the super-scale
// maps the largest sub-scale to -128 as ggml does, then codes are rounded against the
// scales the decoder uses. Element l of a 128-half: ql[l%64] nibble l/64, qh[l%32] bits
// 2*(l/32).
void quantize_q6_k(const float* src, int64_t K, const RowParams&, RowDst dst) {
  for (int64_t b = 0; b < K / kQK_K; ++b) {
    const float* x = src + b * kQK_K;
    uint8_t* blk = dst.data + b * kQ6_KBytes;
    float scale[16];
    float max_scale = 0.0f, max_abs = 0.0f;
    for (int ib = 0; ib < 16; ++ib) {
      scale[ib] = signed_absmax(x + 16 * ib, 16) / -32.0f;
      if (std::fabs(scale[ib]) > max_abs) {
        max_abs = std::fabs(scale[ib]);
        max_scale = scale[ib];
      }
    }
    std::memset(blk, 0, kQ6_KBytes);
    const float iscale = inv_or_zero(-128.0f, max_scale);
    if (iscale == 0.0f) continue;  // all zero (or all below ~1e-37): ggml writes an all-zero block
    auto* scales = reinterpret_cast<int8_t*>(blk + 192);
    for (int ib = 0; ib < 16; ++ib) scales[ib] = int8_t(std::min(127, rne(iscale * scale[ib])));
    store_f16(blk + 208, 1.0f / iscale);
    const float d = load_f16(blk + 208);
    uint8_t* ql = blk;
    uint8_t* qh = blk + 128;
    for (int i = 0; i < kQK_K; ++i) {
      const float dl = d * float(scales[i / 16]);
      const int L = dl != 0.0f ? clampi(rne(x[i] / dl), -32, 31) + 32 : 32;
      const int h = i / 128, l = i % 128;
      ql[64 * h + l % 64] |= uint8_t((L & 0xF) << ((l / 64) * 4));
      qh[32 * h + l % 32] |= uint8_t((L >> 4) << ((l / 32) * 2));
    }
  }
}
void dequantize_q6_k(RowSrc src, int64_t K, const RowParams&, float* dst) {
  for (int64_t b = 0; b < K / kQK_K; ++b) {
    const uint8_t* blk = src.data + b * kQ6_KBytes;
    const auto* scales = reinterpret_cast<const int8_t*>(blk + 192);
    const float d = load_f16(blk + 208);
    for (int i = 0; i < kQK_K; ++i) {
      const int h = i / 128, l = i % 128;
      const int lo = (blk[64 * h + l % 64] >> ((l / 64) * 4)) & 0xF;
      const int hi = (blk[128 + 32 * h + l % 32] >> ((l / 32) * 2)) & 3;
      dst[b * kQK_K + i] = (d * float(scales[i / 16])) * float((lo | (hi << 4)) - 32);
    }
  }
}

// ---- GGUF tq2_0: {qs[64], fp16 d}, d = absmax, codes roundf(x/d)+1 --------------------
// Byte 32*c + m holds elements 128*c + 32*n + m at bits 2n (n = 0..3).
void quantize_tq2_0(const float* src, int64_t K, const RowParams&, RowDst dst) {
  for (int64_t b = 0; b < K / kQK_K; ++b) {
    const float* x = src + b * kQK_K;
    uint8_t* blk = dst.data + b * kTQ2_0Bytes;
    const float d = absmax(x, kQK_K);
    const float id = inv_or_zero(1.0f, d);
    std::memset(blk, 0, 64);
    for (int i = 0; i < kQK_K; ++i) {
      const int code = int(std::roundf(x[i] * id)) + 1;
      const int c = i / 128, n = (i % 128) / 32, m = i % 32;
      blk[32 * c + m] |= uint8_t(code << (2 * n));
    }
    store_f16(blk + 64, d);
  }
}
void dequantize_tq2_0(RowSrc src, int64_t K, const RowParams&, float* dst) {
  for (int64_t b = 0; b < K / kQK_K; ++b) {
    const uint8_t* blk = src.data + b * kTQ2_0Bytes;
    const float d = load_f16(blk + 64);
    for (int i = 0; i < kQK_K; ++i) {
      const int c = i / 128, n = (i % 128) / 32, m = i % 32;
      dst[b * kQK_K + i] = d * float(((blk[32 * c + m] >> (2 * n)) & 3) - 1);
    }
  }
}

void f16_row_to_f32(const void* src, int64_t n, float* dst) {
  const auto* s = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
}
void bf16_row_to_f32(const void* src, int64_t n, float* dst) {
  const auto* s = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
}
void f32_row_to_f16(const float* src, int64_t n, void* dst) {
  auto* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
}
void f32_row_to_bf16(const float* src, int64_t n, void* dst) {
  auto* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
}

}  // namespace

const RowKernels& row_kernels() {
  // clang-format off: the quantize and dequantize rows side by side, in QuantFormat order
  static const RowKernels k{
      {quantize_int8, quantize_int4, quantize_nf4, quantize_ternary, quantize_q4_0, quantize_q8_0,
       quantize_q4_k, quantize_q6_k, quantize_tq2_0},
      {dequantize_int8, dequantize_int4, dequantize_nf4, dequantize_ternary, dequantize_q4_0,
       dequantize_q8_0, dequantize_q4_k, dequantize_q6_k, dequantize_tq2_0},
      f16_row_to_f32, bf16_row_to_f32, f32_row_to_f16, f32_row_to_bf16};
  // clang-format on
  return k;
}

}  // namespace slmops::cpu::ref
