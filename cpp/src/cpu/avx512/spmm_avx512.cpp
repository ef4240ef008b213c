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

inline __m512i step_codes(__m256i codes, const Int8Constants& c) {
  const __m512i t = _mm512_cvtepu8_epi16(codes);
  const __m512i high = _mm512_slli_epi16(_mm512_srli_epi16(t, 4), 8);
  return _mm512_ternarylogic_epi32(t, high, c.low_nibble_words, 0xEC);  // (t & 0x000F) | high
}

inline __m512i step_positions(__m128i index_bytes, const Int8Constants& c) {
  const __m512i bytes = _mm512_broadcast_i32x4(index_bytes);
  const __m512i rep = _mm512_shuffle_epi8(bytes, c.replicate);
  const __m512i odd_pre_shifted = _mm512_mask_blend_epi8(c.odd_bytes, rep, _mm512_srli_epi16(rep, 2));
  const __m512i t = _mm512_srlv_epi16(odd_pre_shifted, c.word_shift);
  return _mm512_ternarylogic_epi32(t, c.low2, c.base, 0xEA);  // (t & 3) | base
}

// Lane l's value of a per-group array (the row's scales or offsets) for a step whose first
// group is p: groups_per_step 2 or 4 (groups of 32 or 16) spread over their lanes; 1
// (groups of 64 or more) broadcast. v holds the step's groups from its first.
inline __m512 lane_values(__m128 v, int groups_per_step, const Int8Constants& c) {
  if (groups_per_step == 1) return _mm512_broadcastss_ps(v);
  return _mm512_permutexvar_ps(c.group_lanes, _mm512_castps128_ps512(v));
}

// The step's groups of a per-group array, exactly (the row may end after them): one float,
// or two by _mm_loadl_epi64 (an unaligned 8-byte load; _mm_load_sd reads through a double*,
// and p is only 4-byte aligned), or four.
inline __m128 step_groups(const float* p, int groups_per_step) {
  if (groups_per_step == 1) return _mm_load_ss(p);
  if (groups_per_step == 2) return _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm_loadu_ps(p);
}

// One weight row's operands for one step of 64 kept values: its codes, the window positions
// they meet, and its lane scales (and offsets).
struct RowStep {
  __m512i q, pos;
  __m512 s, o;
};

// Where a row's arrays start, and the step layout of its quantization groups.
struct RowArrays {
  const uint8_t* codes;
  const uint8_t* index;
  const float* scales;
  const float* offsets;  // nullptr when symmetric
};

template <bool kSymmetric>
inline RowStep full_step(const RowArrays& a, int64_t j, int64_t g, int groups_per_step, const Int8Constants& c) {
  RowStep r{step_codes(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.codes + j / 2)), c),
            step_positions(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.index + j / 4)), c),
            lane_values(step_groups(a.scales + g, groups_per_step), groups_per_step, c),
            {}};
  if constexpr (!kSymmetric) r.o = lane_values(step_groups(a.offsets + g, groups_per_step), groups_per_step, c);
  return r;
}

// The last, partial step of a row (`rest` < 64 kept values, `groups` of them) reads its
// arrays through masks: a copy through the stack would stall store forwarding on every row.
// The missing values get code and index 0: they sit over window columns past K, which the
// windows hold as zeros, so they add nothing.
template <bool kSymmetric>
inline RowStep tail_step(const RowArrays& a, int64_t j, int64_t g, int64_t rest, int64_t groups, int groups_per_step,
                         const Int8Constants& c) {
  const __mmask32 code_mask = __mmask32((1ull << (rest / 2)) - 1);
  const __mmask16 index_mask = __mmask16((1u << ((rest * 2 + 7) / 8)) - 1);
  const __mmask8 group_mask = __mmask8((1u << groups) - 1);
  RowStep r{step_codes(_mm256_maskz_loadu_epi8(code_mask, a.codes + j / 2), c),
            step_positions(_mm_maskz_loadu_epi8(index_mask, a.index + j / 4), c),
            lane_values(_mm_maskz_loadu_ps(group_mask, a.scales + g), groups_per_step, c),
            {}};
  if constexpr (!kSymmetric) r.o = lane_values(_mm_maskz_loadu_ps(group_mask, a.offsets + g), groups_per_step, c);
  return r;
}

// NR weight rows [n, n + NR) against R activation rows [m0, m0 + R): each weight row's step
// is decoded once for the R rows, each activation window loaded once for the NR rows. With
// one activation row (decode), NR = 4 rows interleave so their dependency chains overlap: a
// 2:4 row of K = 576 is 4.5 steps, and one at a time is latency, not throughput.
// Symmetric weights (zero point 8) need no offsets: the lane sums come off the products in
// integers, dot - 8 * sum, and one conversion follows.
template <int NR, int R, bool kSymmetric>
void int8_block(const NMSparseWeight& w, const NMRowStrides& rs, const Int8Constants& c, int64_t n,
                const SpmmInt8Rows& x, int64_t m0, float* y) {
  const int64_t kept = rs.kept, full = kept / 64 * 64;
  const int groups_per_step = w.group <= 64 ? int(64 / w.group) : 1;
  const int64_t steps_per_group = w.group <= 64 ? 1 : w.group / 64;
  RowArrays rows[NR];
  for (int i = 0; i < NR; ++i)
    rows[i] = {static_cast<const uint8_t*>(w.values) + (n + i) * rs.value_bytes, w.indices + (n + i) * rs.index_bytes,
               w.scales + (n + i) * rs.groups, kSymmetric ? nullptr : w.offsets.data() + (n + i) * rs.groups};
  const int8_t* win[R];
  const float* xs[R];
  for (int r = 0; r < R; ++r) {
    win[r] = x.windows + (m0 + r) * x.windows_per_row * 128;
    xs[r] = x.lane_scales + (m0 + r) * x.windows_per_row * 16;
  }
  __m512 acc[NR][R], acc_sum[NR][R];  // the products, and the zero-point terms (with offsets)
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = acc_sum[i][r] = _mm512_setzero_ps();
  auto apply = [&](const RowStep(&st)[NR], int64_t t) {
    for (int r = 0; r < R; ++r) {
      const __m512i lo = _mm512_loadu_si512(win[r] + t * 128), hi = _mm512_loadu_si512(win[r] + t * 128 + 64);
      const __m512 sx = _mm512_loadu_ps(xs[r] + t * 16);
      for (int i = 0; i < NR; ++i) {
        const __m512i pos = st[i].pos;
        const __m512i xg = _mm512_mask_shuffle_epi8(_mm512_shuffle_epi8(lo, pos), c.high_half_lanes, hi, pos);
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), st[i].q, xg);
        const __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c.ones, xg);
        if constexpr (kSymmetric) {
          const __m512i centered = _mm512_sub_epi32(dot, _mm512_slli_epi32(sum, 3));
          acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(centered), _mm512_mul_ps(st[i].s, sx), acc[i][r]);
        } else {
          acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(st[i].s, sx), acc[i][r]);
          acc_sum[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(st[i].o, sx), acc_sum[i][r]);
        }
      }
    }
  };
  int64_t g = 0, step_in_group = 0, t = 0;  // the step's first quantization group, without a division
  RowStep st[NR];
  for (int64_t j = 0; j < full; j += 64, ++t) {
    for (int i = 0; i < NR; ++i) {
      // One stream per array of each row: requested ahead, as nm_rows does.
      __builtin_prefetch(rows[i].codes + j / 2 + 4096);
      __builtin_prefetch(rows[i].index + j / 4 + 2048);
      __builtin_prefetch(rows[i].scales + g + 512);
      if constexpr (!kSymmetric) __builtin_prefetch(rows[i].offsets + g + 512);
      st[i] = full_step<kSymmetric>(rows[i], j, g, groups_per_step, c);
    }
    apply(st, t);
    if (groups_per_step > 1) {
      g += groups_per_step;
    } else if (++step_in_group == steps_per_group) {
      ++g;
      step_in_group = 0;
    }
  }
  if (full < kept) {
    const int64_t groups = std::min<int64_t>(groups_per_step, rs.groups - g);
    for (int i = 0; i < NR; ++i)
      st[i] = tail_step<kSymmetric>(rows[i], full, g, kept - full, groups, groups_per_step, c);
    apply(st, t);
  }
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r)
      y[(m0 + r) * w.N + n + i] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][r], acc_sum[i][r]));
}

template <bool kSymmetric>
void int8_rows(const NMSparseWeight& w, const Int8Constants& c, const SpmmInt8Rows& x, int64_t M, float* y, int64_t n0,
               int64_t n1) {
  const NMRowStrides rs(w);
  int64_t m = 0;
  for (; m + 4 <= M; m += 4)  // four activation rows share each weight row's decode
    for (int64_t n = n0; n < n1; ++n) int8_block<1, 4, kSymmetric>(w, rs, c, n, x, m, y);
  for (; m < M; ++m) {  // one: four weight rows interleave
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) int8_block<4, 1, kSymmetric>(w, rs, c, n, x, m, y);
    for (; n < n1; ++n) int8_block<1, 1, kSymmetric>(w, rs, c, n, x, m, y);
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
