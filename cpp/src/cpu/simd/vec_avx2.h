// The vector vocabulary quant_simd.inc is written in, for AVX2 (8 fp32 lanes).
// Included only by the AVX2 translation unit, inside namespace slmops::cpu::avx2.

using VF = __m256;
using VI = __m256i;
constexpr int W = 8;

static inline VF loadf(const float* p) { return _mm256_loadu_ps(p); }
static inline void storef(float* p, VF v) { _mm256_storeu_ps(p, v); }
static inline VF set1(float x) { return _mm256_set1_ps(x); }
static inline VF absf(VF x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
static inline VF maxf(VF a, VF b) { return _mm256_max_ps(a, b); }
static inline VF minf(VF a, VF b) { return _mm256_min_ps(a, b); }
static inline VF mulf(VF a, VF b) { return _mm256_mul_ps(a, b); }
static inline VF addf(VF a, VF b) { return _mm256_add_ps(a, b); }
static inline VF subf(VF a, VF b) { return _mm256_sub_ps(a, b); }
static inline VF divf(VF a, VF b) { return _mm256_div_ps(a, b); }
static inline float hmax(VF v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
static inline float hmin(VF v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
// Round half to even (the MXCSR default) and truncate toward zero.
static inline VI rne_i32(VF x) { return _mm256_cvtps_epi32(x); }
static inline VI trunc_i32(VF x) { return _mm256_cvttps_epi32(x); }
// roundf(): half away from zero, built from truncation so it is exact.
static inline VF round_away(VF x) {
  const VF t = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const VF ge_half = _mm256_cmp_ps(absf(_mm256_sub_ps(x, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
  const VF one = _mm256_or_ps(_mm256_and_ps(x, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(1.0f));
  return _mm256_add_ps(t, _mm256_and_ps(ge_half, one));
}
static inline VI clampi(VI v, int lo, int hi) {
  return _mm256_min_epi32(_mm256_max_epi32(v, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi));
}
static inline VI mini(VI v, int hi) { return _mm256_min_epi32(v, _mm256_set1_epi32(hi)); }
static inline VI addi(VI v, int c) { return _mm256_add_epi32(v, _mm256_set1_epi32(c)); }
static inline VF cvt_f32(VI v) { return _mm256_cvtepi32_ps(v); }
// Stores the low byte of each lane.
static inline void store_u8(uint8_t* p, VI v) {
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1,
                                        -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i bytes =
      _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, pick), _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(bytes));
}
static inline VI load_u8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
static inline VI load_i8(const int8_t* p) {
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
// Number of thresholds t[0..n) strictly below each lane.
static inline VI count_gt(VF v, const float* t, int n) {
  __m256i acc = _mm256_setzero_si256();
  for (int i = 0; i < n; ++i)
    acc = _mm256_sub_epi32(acc, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_set1_ps(t[i]), _CMP_GT_OQ)));
  return acc;
}
// table[idx] for idx in 0..15.
static inline VF lut16(VI idx, const float* table) {
  const VF lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), idx);
  const VF hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7))));
}
static inline VF load_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
static inline void f16_to_f32_w(const uint16_t* p, float* dst) {
  _mm256_storeu_ps(dst, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
static inline void f32_to_f16_w(const float* src, uint16_t* p) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(_mm256_loadu_ps(src), _MM_FROUND_TO_NEAREST_INT));
}

// ---- for the matmul kernels: byte vectors are VI seen as 4W = 32 bytes ----------------
static inline VF fmaddf(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
static inline float hsum(VF v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline VI load_bytes(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
static inline VI low_nibbles(VI b) { return _mm256_and_si256(b, _mm256_set1_epi8(0x0F)); }
static inline VI high_nibbles(VI b) { return _mm256_and_si256(_mm256_srli_epi16(b, 4), _mm256_set1_epi8(0x0F)); }
static inline VI crumbs(VI b, int j) {  // 2-bit field j of every byte
  return _mm256_and_si256(_mm256_srli_epi16(b, 2 * j), _mm256_set1_epi8(0x03));
}
// acc (int32 lanes) += sum of the 4 byte products u8[4l..4l+3] * s8[4l..4l+3] per lane.
// maddubs saturates int16 only above 32767: our unsigned operands are <= 15 (codes).
static inline VI dot_u8s8(VI acc, VI u8, VI s8) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u8, s8), _mm256_set1_epi16(1)));
}
// Signed x signed: |a| against b with a's sign, so no product exceeds 127*127.
static inline VI dot_s8s8(VI acc, VI a, VI b) { return dot_u8s8(acc, _mm256_abs_epi8(a), _mm256_sign_epi8(b, a)); }
// Lanes of int32 from W bytes (zero-extended).
static inline VI expand_u8(const uint8_t* p) { return load_u8(p); }
static inline VF permute_f(VF table8, VI idx) { return _mm256_permutevar8x32_ps(table8, idx); }
// Up to W floats from p (n may be less: the rest are zero).
static inline VF load_partial_f(const float* p, int n) {
  alignas(32) float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n && i < 8; ++i) tmp[i] = p[i];
  return _mm256_load_ps(tmp);
}
static inline VI set_lanes(const int* v) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v)); }
static inline VI andi(VI v, int m) { return _mm256_and_si256(v, _mm256_set1_epi32(m)); }
static inline VI srli32(VI v, int s) { return _mm256_srli_epi32(v, s); }
static inline VI zero_i() { return _mm256_setzero_si256(); }
// T[i] = s*i + o and T[i] = code[i]*s for i in 0..15, the per-group decoding tables.
static inline void affine_table16(float* T, float s, float o) {
  const VF vs = _mm256_set1_ps(s), vo = _mm256_set1_ps(o);
  _mm256_storeu_ps(T, _mm256_fmadd_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), vs, vo));
  _mm256_storeu_ps(T + 8, _mm256_fmadd_ps(_mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15), vs, vo));
}
static inline void scaled_table16(float* T, const float* code, float s) {
  const VF vs = _mm256_set1_ps(s);
  _mm256_storeu_ps(T, _mm256_mul_ps(_mm256_loadu_ps(code), vs));
  _mm256_storeu_ps(T + 8, _mm256_mul_ps(_mm256_loadu_ps(code + 8), vs));
}
static inline VI sub_i(VI a, VI b) { return _mm256_sub_epi32(a, b); }
static inline VI bcast4(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}
// int8 panel codes are offset binary (w + 128): maddubs would saturate int16 on them, so
// AVX2 restores the signed weights (xor 0x80) and uses the sign trick; no bias to undo.
constexpr int kInt8PanelBias = 0;
static inline VI dot_int8_panel(VI acc, VI w_offset, VI x_s8) {
  return dot_s8s8(acc, _mm256_xor_si256(w_offset, _mm256_set1_epi8(char(0x80))), x_s8);
}
static inline VI set1_i(int v) { return _mm256_set1_epi32(v); }
static inline VI table16_bytes(const uint8_t* t) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
}
static inline VI shuffle_bytes(VI table, VI idx) { return _mm256_shuffle_epi8(table, idx); }

// ---- for the distillation losses (kd_simd.inc) ------------------------------------------
static inline VF round_nearest(VF x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// y * 2^n for integral n in [-126, 127]: n + 127 goes straight into the exponent field.
static inline VF scale_pow2(VF y, VF n) {
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
// v where x >= lo or x is NaN, else 0 (NaN must propagate, not vanish).
static inline VF zero_below(VF x, float lo, VF v) {
  return _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_NLT_UQ), v);
}

// ---- for the sparse matmul (spmm_simd.inc) -----------------------------------------------
// Lane l: bit field l of b bits (b*8 <= 24) of bits; shifts holds b * l per lane.
static inline VI bitfields(uint64_t bits, int b, VI shifts) {
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(uint32_t(bits))), shifts),
                          _mm256_set1_epi32((1 << b) - 1));
}
// Lane l: x[pos_l] for pos_l < 2W (a 16-float window): two permutes and a blend.
static inline VF gather_window(const float* x, VI pos) { return lut16(pos, x); }
static inline VF gather_f(const float* base, VI idx) { return _mm256_i32gather_ps(base, idx, 4); }
static inline VF load_bf16(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
// W 4-bit codes from W/2 bytes, element 2i in the low nibble of byte i.
static inline VI load_nibbles(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  const __m128i b = _mm_cvtsi32_si128(v);
  const __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0F)),
                hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
  return _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
}
static inline VI load_i16(const int16_t* p) {
  return _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
static inline VI load_i32(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
static inline void store_i32(int32_t* p, VI v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
static inline VI add_vi(VI a, VI b) { return _mm256_add_epi32(a, b); }
