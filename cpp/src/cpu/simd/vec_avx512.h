// The vector vocabulary quant_simd.inc is written in, for AVX-512 (16 fp32 lanes).
// Included only by the AVX-512 translation unit, inside namespace slmops::cpu::avx512.

using VF = __m512;
using VI = __m512i;
constexpr int W = 16;

static inline VF loadf(const float* p) { return _mm512_loadu_ps(p); }
static inline void storef(float* p, VF v) { _mm512_storeu_ps(p, v); }
static inline VF set1(float x) { return _mm512_set1_ps(x); }
static inline VF absf(VF x) { return _mm512_abs_ps(x); }
static inline VF maxf(VF a, VF b) { return _mm512_max_ps(a, b); }
static inline VF minf(VF a, VF b) { return _mm512_min_ps(a, b); }
static inline VF mulf(VF a, VF b) { return _mm512_mul_ps(a, b); }
static inline VF addf(VF a, VF b) { return _mm512_add_ps(a, b); }
static inline VF subf(VF a, VF b) { return _mm512_sub_ps(a, b); }
static inline VF divf(VF a, VF b) { return _mm512_div_ps(a, b); }
static inline float hmax(VF v) { return _mm512_reduce_max_ps(v); }
static inline float hmin(VF v) { return _mm512_reduce_min_ps(v); }
static inline VI rne_i32(VF x) { return _mm512_cvtps_epi32(x); }
static inline VI trunc_i32(VF x) { return _mm512_cvttps_epi32(x); }
static inline VF round_away(VF x) {
  const VF t = _mm512_roundscale_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __mmask16 ge_half = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(x, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
  const VF one =
      _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(int(0x80000000u))),
                                          _mm512_castps_si512(_mm512_set1_ps(1.0f))));
  return _mm512_mask_add_ps(t, ge_half, t, one);
}
static inline VI clampi(VI v, int lo, int hi) {
  return _mm512_min_epi32(_mm512_max_epi32(v, _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi));
}
static inline VI mini(VI v, int hi) { return _mm512_min_epi32(v, _mm512_set1_epi32(hi)); }
static inline VI addi(VI v, int c) { return _mm512_add_epi32(v, _mm512_set1_epi32(c)); }
static inline VF cvt_f32(VI v) { return _mm512_cvtepi32_ps(v); }
static inline void store_u8(uint8_t* p, VI v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v));
}
static inline VI load_u8(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
static inline VI load_i8(const int8_t* p) {
  return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
static inline VI count_gt(VF v, const float* t, int n) {
  __m512i acc = _mm512_setzero_si512();
  const __m512i one = _mm512_set1_epi32(1);
  for (int i = 0; i < n; ++i)
    acc = _mm512_mask_add_epi32(acc, _mm512_cmp_ps_mask(v, _mm512_set1_ps(t[i]), _CMP_GT_OQ), acc, one);
  return acc;
}
static inline VF lut16(VI idx, const float* table) { return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(table)); }
static inline VF load_f16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
static inline void f16_to_f32_w(const uint16_t* p, float* dst) {
  _mm512_storeu_ps(dst, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
}
static inline void f32_to_f16_w(const float* src, uint16_t* p) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(_mm512_loadu_ps(src), _MM_FROUND_TO_NEAREST_INT));
}

// ---- for the matmul kernels: byte vectors are VI seen as 4W = 64 bytes ----------------
static inline VF fmaddf(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
static inline float hsum(VF v) { return _mm512_reduce_add_ps(v); }
static inline VI load_bytes(const void* p) { return _mm512_loadu_si512(p); }
static inline VI low_nibbles(VI b) { return _mm512_and_si512(b, _mm512_set1_epi8(0x0F)); }
static inline VI high_nibbles(VI b) { return _mm512_and_si512(_mm512_srli_epi16(b, 4), _mm512_set1_epi8(0x0F)); }
static inline VI crumbs(VI b, int j) {
  return _mm512_and_si512(_mm512_srli_epi16(b, unsigned(2 * j)), _mm512_set1_epi8(0x03));
}
// VNNI: one instruction, exact int32 accumulation.
static inline VI dot_u8s8(VI acc, VI u8, VI s8) { return _mm512_dpbusd_epi32(acc, u8, s8); }
static inline VI dot_s8s8(VI acc, VI a, VI b) {
  const __mmask64 neg = _mm512_movepi8_mask(a);
  const VI zero = _mm512_setzero_si512();
  return _mm512_dpbusd_epi32(acc, _mm512_abs_epi8(a), _mm512_mask_sub_epi8(b, neg, zero, b));
}
static inline VI expand_u8(const uint8_t* p) { return load_u8(p); }
static inline VF permute_f(VF table16, VI idx) { return _mm512_permutexvar_ps(idx, table16); }
static inline VF load_partial_f(const float* p, int n) {
  return _mm512_maskz_loadu_ps(__mmask16(n >= 16 ? 0xFFFF : (1u << n) - 1), p);
}
static inline VI set_lanes(const int* v) { return _mm512_loadu_si512(v); }
static inline VI andi(VI v, int m) { return _mm512_and_si512(v, _mm512_set1_epi32(m)); }
static inline VI srli32(VI v, int s) { return _mm512_srli_epi32(v, unsigned(s)); }
static inline VI zero_i() { return _mm512_setzero_si512(); }
static inline void affine_table16(float* T, float s, float o) {
  const VF iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  _mm512_storeu_ps(T, _mm512_fmadd_ps(iota, _mm512_set1_ps(s), _mm512_set1_ps(o)));
}
static inline void scaled_table16(float* T, const float* code, float s) {
  _mm512_storeu_ps(T, _mm512_mul_ps(_mm512_loadu_ps(code), _mm512_set1_ps(s)));
}
static inline VI sub_i(VI a, VI b) { return _mm512_sub_epi32(a, b); }
static inline VI bcast4(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}
// int8 panel codes are offset binary (w + 128): VNNI takes them as its unsigned operand,
// one instruction per 64 products; the 128 * sum(x) this adds is subtracted per segment.
constexpr int kInt8PanelBias = 128;
static inline VI dot_int8_panel(VI acc, VI w_offset, VI x_s8) { return _mm512_dpbusd_epi32(acc, w_offset, x_s8); }
static inline VI set1_i(int v) { return _mm512_set1_epi32(v); }
static inline VI table16_bytes(const uint8_t* t) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
}
static inline VI shuffle_bytes(VI table, VI idx) { return _mm512_shuffle_epi8(table, idx); }

// ---- for the distillation losses (kd_simd.inc) ------------------------------------------
static inline VF round_nearest(VF x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// y * 2^n for integral n in [-126, 127].
static inline VF scale_pow2(VF y, VF n) { return _mm512_scalef_ps(y, n); }
// v where x >= lo or x is NaN, else 0 (NaN must propagate, not vanish).
static inline VF zero_below(VF x, float lo, VF v) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(lo), _CMP_NLT_UQ), v);
}

// ---- for the sparse matmul (spmm_simd.inc) -----------------------------------------------
// Lane l: bit field l of b bits (b*16 <= 48) of bits; shifts holds b * (l % 8) per lane.
static inline VI bitfields(uint64_t bits, int b, VI shifts) {
  const VI v = _mm512_mask_set1_epi32(_mm512_set1_epi32(int(uint32_t(bits))), 0xFF00, int(uint32_t(bits >> (8 * b))));
  return _mm512_and_si512(_mm512_srlv_epi32(v, shifts), _mm512_set1_epi32((1 << b) - 1));
}
// Lane l: x[pos_l] for pos_l < 2W: one two-source permute over the 32-float window.
static inline VF gather_window(const float* x, VI pos) {
  return _mm512_permutex2var_ps(_mm512_loadu_ps(x), pos, _mm512_loadu_ps(x + 16));
}
static inline VF gather_f(const float* base, VI idx) { return _mm512_i32gather_ps(idx, base, 4); }
static inline VF load_bf16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
// W 4-bit codes from W/2 bytes, element 2i in the low nibble of byte i.
static inline VI load_nibbles(const uint8_t* p) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0F)),
                hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
  return _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
}
static inline VI load_i16(const int16_t* p) {
  return _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
static inline VI load_i32(const int32_t* p) { return _mm512_loadu_si512(p); }
static inline void store_i32(int32_t* p, VI v) { _mm512_storeu_si512(p, v); }
static inline VI add_vi(VI a, VI b) { return _mm512_add_epi32(a, b); }
