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
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, pick), _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
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
static inline void f16_to_f32_w(const uint16_t* p, float* dst) {
  _mm256_storeu_ps(dst, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
static inline void f32_to_f16_w(const float* src, uint16_t* p) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(_mm256_loadu_ps(src), _MM_FROUND_TO_NEAREST_INT));
}
