// Sparse matmul kernels for avx512: spmm_simd.inc compiled with this ISA's flags (set on this
// file only, in CMakeLists.txt) inside its own namespace, plus the int8-activation kernel
// for 2:4 int4 weights, which only AVX-512 (BW byte shuffles, VNNI) has.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/spmm_kernels.h"

namespace slmops::cpu::avx512 {
#include "cpu/simd/vec_avx512.h"

namespace {

// 2:4 int4 weights x int8 activations, 64 kept values (128 columns) a step:
//  - codes: 32 bytes widened to 16-bit words, each word's two nibbles split into its two
//    bytes, so byte p holds kept value p (unsigned 0..15, VNNI's unsigned operand);
//  - positions: the 16 index bytes broadcast to the four lanes, byte p picks index byte
//    p / 4, a word shift brings field p % 4 to the bottom, and (field & 3) | 4 * (p % 8 / 2)
//    is the column of kept value p within the 16 columns of its half lane;
//  - activations: two byte shuffles from the window's two 64-byte halves (SpmmInt8Rows)
//    gather the 64 int8 activations the kept values meet;
//  - one VNNI dot gives 16 lanes of 4 products, a second the lanes' activation sums (for the
//    zero points: w = s * q + o, or s * (q - 8) when symmetric); each lane lies in one
//    activation block and one quantization group, so it is converted once.
struct Int8Constants {
  __m512i replicate, word_shift, base, low2, low_nibble_words, ones;
  __mmask64 odd_bytes = 0xAAAAAAAAAAAAAAAAull, high_half_lanes = 0xFF00FF00FF00FF00ull;
  __m512i group_lanes;  // groups < 64: lane l's group relative to the step's first, 4 * l / group
  explicit Int8Constants(int64_t group) {
    alignas(64) int8_t rep[64], base_b[64];
    alignas(64) int16_t shift[32];
    alignas(64) int32_t lanes[16];
    for (int p = 0; p < 64; ++p) {
      rep[p] = int8_t(4 * (p / 16) + (p % 16) / 4);
      base_b[p] = int8_t(4 * ((p % 8) / 2));
    }
    for (int w = 0; w < 32; ++w) shift[w] = int16_t((2 * w) % 4 < 2 ? 0 : 4);
    for (int l = 0; l < 16; ++l) lanes[l] = group < 64 ? int32_t(4 * l / group) : 0;
    replicate = _mm512_load_si512(rep);
    base = _mm512_load_si512(base_b);
    word_shift = _mm512_load_si512(shift);
    group_lanes = _mm512_load_si512(lanes);
    low2 = _mm512_set1_epi8(3);
    low_nibble_words = _mm512_set1_epi16(0x000F);
    ones = _mm512_set1_epi8(1);
  }
};

inline __m512i step_codes(const uint8_t* codes, const Int8Constants& c) {
  const __m512i t = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes)));
  const __m512i high = _mm512_slli_epi16(_mm512_srli_epi16(t, 4), 8);
  return _mm512_ternarylogic_epi32(t, high, c.low_nibble_words, 0xEC);  // (t & 0x000F) | high
}

inline __m512i step_positions(const uint8_t* index_bytes, const Int8Constants& c) {
  const __m512i bytes = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(index_bytes)));
  const __m512i rep = _mm512_shuffle_epi8(bytes, c.replicate);
  const __m512i odd_pre_shifted = _mm512_mask_blend_epi8(c.odd_bytes, rep, _mm512_srli_epi16(rep, 2));
  const __m512i t = _mm512_srlv_epi16(odd_pre_shifted, c.word_shift);
  return _mm512_ternarylogic_epi32(t, c.low2, c.base, 0xEA);  // (t & 3) | base
}

// Lane l's value of a per-group array (the row's scales or offsets) for a step whose first
// group is p: groups_per_step 2 or 4 (groups of 32 or 16) are loaded exactly and spread
// over their lanes; 1 (groups of 64 or more) is broadcast.
inline __m512 lane_values(const float* p, int groups_per_step, const Int8Constants& c) {
  if (groups_per_step == 1) return _mm512_set1_ps(*p);
  // Two floats by _mm_loadl_epi64 (an unaligned 8-byte load), not _mm_load_sd: that one reads
  // through a double*, and p is only 4-byte aligned (UBSan: misaligned load).
  const __m128 v =
      groups_per_step == 2 ? _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))) : _mm_loadu_ps(p);
  return _mm512_permutexvar_ps(c.group_lanes, _mm512_castps128_ps512(v));
}

// Symmetric weights (zero point 8) need no offsets: the lane sums come off the products in
// integers, dot - 8 * sum, and one conversion follows.
template <int R, bool kSymmetric>
void int8_row_block(const NMSparseWeight& w, const NMRowStrides& rs, const Int8Constants& c, int64_t n,
                    const SpmmInt8Rows& x, int64_t m0, float* y) {
  const int64_t kept = rs.kept, full = kept / 64 * 64;
  const uint8_t* codes = static_cast<const uint8_t*>(w.values) + n * rs.value_bytes;
  const uint8_t* index_row = w.indices + n * rs.index_bytes;
  const float* scales = w.scales + n * rs.groups;
  const float* offsets = kSymmetric ? nullptr : w.offsets.data() + n * rs.groups;
  const int8_t* win[R];
  const float* xs[R];
  for (int r = 0; r < R; ++r) {
    win[r] = x.windows + (m0 + r) * x.windows_per_row * 128;
    xs[r] = x.lane_scales + (m0 + r) * x.windows_per_row * 16;
  }
  __m512 acc[R], acc_sum[R];  // the products, and the zero-point terms (with offsets)
  for (int r = 0; r < R; ++r) acc[r] = acc_sum[r] = _mm512_setzero_ps();
  // The step's first quantization group, without a division per step.
  const int groups_per_step = w.group <= 64 ? int(64 / w.group) : 1;
  const int64_t steps_per_group = w.group <= 64 ? 1 : w.group / 64;
  int64_t g = 0, step_in_group = 0;
  // One step of 64 kept values: codes, index bytes, scales and offsets from the pointers.
  auto step = [&](const uint8_t* step_codes_at, const uint8_t* step_index_at, const float* step_scales,
                  const float* step_offsets, int64_t t) {
    const __m512i q = step_codes(step_codes_at, c);
    const __m512i pos = step_positions(step_index_at, c);
    const __m512 s = lane_values(step_scales, groups_per_step, c);
    __m512 o = s;
    if constexpr (!kSymmetric) o = lane_values(step_offsets, groups_per_step, c);
    for (int r = 0; r < R; ++r) {
      const int8_t* xw = win[r] + t * 128;
      const __m512i lo = _mm512_loadu_si512(xw), hi = _mm512_loadu_si512(xw + 64);
      const __m512i xg = _mm512_mask_shuffle_epi8(_mm512_shuffle_epi8(lo, pos), c.high_half_lanes, hi, pos);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, xg);
      const __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c.ones, xg);
      const __m512 sx = _mm512_loadu_ps(xs[r] + t * 16);
      if constexpr (kSymmetric) {
        const __m512i centered = _mm512_sub_epi32(dot, _mm512_slli_epi32(sum, 3));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(centered), _mm512_mul_ps(s, sx), acc[r]);
      } else {
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(s, sx), acc[r]);
        acc_sum[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(o, sx), acc_sum[r]);
      }
    }
  };
  int64_t t = 0;
  for (int64_t j = 0; j < full; j += 64, ++t) {
    // One stream per array of the row: requested ahead, as nm_rows does.
    __builtin_prefetch(codes + j / 2 + 4096);
    __builtin_prefetch(index_row + j / 4 + 2048);
    __builtin_prefetch(scales + g + 512);
    if constexpr (!kSymmetric) __builtin_prefetch(offsets + g + 512);
    step(codes + j / 2, index_row + j / 4, scales + g, kSymmetric ? nullptr : offsets + g, t);
    if (groups_per_step > 1) {
      g += groups_per_step;
    } else if (++step_in_group == steps_per_group) {
      ++g;
      step_in_group = 0;
    }
  }
  if (full < kept) {
    // The last, partial step from zero-padded copies (the row's arrays end inside it). Its
    // missing values sit over window columns past K, which the windows hold as zeros, so the
    // padding adds nothing whatever its codes.
    const int64_t rest = kept - full;
    alignas(64) uint8_t code_tail[32] = {}, index_tail[16] = {};
    alignas(16) float scale_tail[4] = {}, offset_tail[4] = {};
    std::memcpy(code_tail, codes + full / 2, size_t(rest / 2));
    std::memcpy(index_tail, index_row + full / 4, size_t((rest * 2 + 7) / 8));
    const int64_t tail_groups = std::min<int64_t>(groups_per_step, rs.groups - g);
    std::memcpy(scale_tail, scales + g, size_t(tail_groups) * sizeof(float));
    if constexpr (!kSymmetric) std::memcpy(offset_tail, offsets + g, size_t(tail_groups) * sizeof(float));
    step(code_tail, index_tail, scale_tail, offset_tail, t);
  }
  for (int r = 0; r < R; ++r) y[(m0 + r) * w.N + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], acc_sum[r]));
}

template <bool kSymmetric>
void int8_rows(const NMSparseWeight& w, const Int8Constants& c, const SpmmInt8Rows& x, int64_t M, float* y, int64_t n0,
               int64_t n1) {
  const NMRowStrides rs(w);
  for (int64_t n = n0; n < n1; ++n) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) int8_row_block<4, kSymmetric>(w, rs, c, n, x, m, y);
    for (; m < M; ++m) int8_row_block<1, kSymmetric>(w, rs, c, n, x, m, y);
  }
}

void nm_rows_int8(const NMSparseWeight& w, const SpmmInt8Rows& x, int64_t M, float* y, int64_t n0, int64_t n1) {
  const Int8Constants c(w.group);
  if (w.offsets.empty()) return int8_rows<true>(w, c, x, M, y, n0, n1);
  int8_rows<false>(w, c, x, M, y, n0, n1);
}

}  // namespace

constexpr NmRowsInt8Fn kNmRowsInt8 = nm_rows_int8;
#include "cpu/simd/spmm_simd.inc"
}  // namespace slmops::cpu::avx512
