// Sparse matmul drivers: layout validation, the split of output rows over threads, the
// choice between the few-rows kernels and the transposed many-rows path, bias. Baseline
// compiler flags only.
#include "slmops/spmm.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/spmm_kernels.h"
#include "slmops/threading.h"

namespace slmops {

const cpu::SpmmKernels& cpu::spmm_kernels_for(CpuIsa isa) {
  switch (resolve_cpu_isa(isa)) {
#ifdef SLMOPS_HAVE_AVX512
    case CpuIsa::kAvx512: return avx512::spmm_kernels();
#endif
#ifdef SLMOPS_HAVE_AVX2
    case CpuIsa::kAvx2: return avx2::spmm_kernels();
#endif
    default: return ref::spmm_kernels();
  }
}

namespace {

void invalid(const std::string& what) { throw std::invalid_argument(what); }

// The many-rows path: xT [K, Mp] (activation rows padded to Mp with zeros), then per block
// of output rows and block of columns, every row's kept weights in those columns are
// decoded once and accumulated against one 64-row slice of xT at a time: 64 columns x 64
// activation rows of xT (16 KiB) stay in L1 while the block's 32 rows sweep them.
// `slice(n, k0, k1, vals, cols)` yields row n's kept weights in [k0, k1) as (vals, cols, count).
template <class Slice>
void spmm_transposed(int64_t N, int64_t K, const float* x, int64_t M, const float* bias, float* y,
                     const cpu::SpmmKernels& kernels, const Slice& slice) {
  constexpr int64_t kRowsPerBlock = 32, kColsPerBlock = 64, kSliceRows = 64;
  const int64_t Mp = (M + 15) / 16 * 16;
  std::vector<float> xT(static_cast<size_t>(K * Mp), 0.0f);
  parallel_for(K, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t m = 0; m < M; ++m) xT[size_t(k * Mp + m)] = x[m * K + k];
  });
  const int64_t blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
  parallel_for(blocks, [&](int64_t b0, int64_t b1) {
    std::vector<float> acc(static_cast<size_t>(kRowsPerBlock * Mp));
    std::vector<float> vals(static_cast<size_t>(kRowsPerBlock * kColsPerBlock));
    std::vector<int32_t> cols(static_cast<size_t>(kRowsPerBlock * kColsPerBlock));
    const float* v[kRowsPerBlock];
    const int32_t* c[kRowsPerBlock];
    int64_t count[kRowsPerBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kRowsPerBlock, n1 = std::min(N, n0 + kRowsPerBlock);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t k0 = 0; k0 < K; k0 += kColsPerBlock) {
        const int64_t k1 = std::min(K, k0 + kColsPerBlock);
        for (int64_t n = n0; n < n1; ++n) {
          const size_t at = size_t((n - n0) * kColsPerBlock);
          slice(n, k0, k1, &vals[at], &cols[at], &v[n - n0], &c[n - n0], &count[n - n0]);
        }
        for (int64_t m0 = 0; m0 < Mp; m0 += kSliceRows)
          for (int64_t n = n0; n < n1; ++n)
            kernels.accumulate(v[n - n0], c[n - n0], count[n - n0], xT.data() + m0, Mp,
                               std::min(kSliceRows, Mp - m0), &acc[size_t((n - n0) * Mp + m0)]);
      }
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t m = 0; m < M; ++m) y[m * N + n] = acc[size_t((n - n0) * Mp + m)] + (bias ? bias[n] : 0.0f);
    }
  });
}

void add_bias(const float* bias, int64_t M, int64_t N, float* y) {
  if (!bias) return;
  parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] += bias[n];
  });
}

}  // namespace

NMSparseWeight make_nm_weight(int64_t N, int64_t K, int n, int m, SparseValueType type, const void* values,
                              const float* scales, const uint8_t* zero_points, int64_t group,
                              const uint8_t* indices) {
  if (!((n == 2 && m == 4) || (n == 4 && m == 8)))
    invalid("pattern must be 2:4 or 4:8, got " + std::to_string(n) + ":" + std::to_string(m));
  if (N <= 0 || K <= 0) invalid("the weight must have at least one row and one column");
  if (K % m) invalid("in_features (" + std::to_string(K) + ") must be a multiple of " + std::to_string(m));
  NMSparseWeight w;
  w.N = N;
  w.K = K;
  w.n = n;
  w.m = m;
  w.type = type;
  w.values = values;
  w.indices = indices;
  if (!values || !indices) invalid("values and indices are required");
  const bool quantized = type == SparseValueType::kInt8 || type == SparseValueType::kInt4;
  if (quantized) {
    const int64_t kept = w.kept();
    w.group = group ? group : kept;
    if (!scales) invalid("int8 and int4 values need their scales");
    if (w.group != kept && w.group % 16)
      invalid("the quantization group of sparse values must be a multiple of 16 kept values or the whole row, got " +
              std::to_string(group));
    w.scales = scales;
    if (type == SparseValueType::kInt4) {
      const int64_t groups = w.groups(), zp_bytes = (groups + 1) / 2;
      w.offsets.resize(size_t(N * groups));
      for (int64_t r = 0; r < N; ++r)
        for (int64_t g = 0; g < groups; ++g) {
          const int zp = zero_points ? (zero_points[r * zp_bytes + g / 2] >> ((g & 1) * 4)) & 0xF : 8;
          w.offsets[size_t(r * groups + g)] = -float(zp) * scales[r * groups + g];
        }
    }
  }
  return w;
}

void validate_csr(const CsrWeight& w) {
  if (w.N <= 0 || w.K <= 0) invalid("the weight must have at least one row and one column");
  if (w.row_ptr[0] != 0) invalid("row_ptr[0] must be 0, got " + std::to_string(w.row_ptr[0]));
  if (w.cols16 && w.K > 32768) invalid("int16 column indices hold in_features up to 32768; use int32");
  for (int64_t n = 0; n < w.N; ++n) {
    const int64_t begin = w.row_ptr[n], end = w.row_ptr[n + 1];
    if (end < begin) invalid("row_ptr must not decrease: row " + std::to_string(n));
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c = cpu::csr_column(w, i);
      if (c < 0 || c >= w.K)
        invalid("row " + std::to_string(n) + " has column index " + std::to_string(c) + " outside [0, " +
                std::to_string(w.K) + ")");
      if (i > begin && c <= cpu::csr_column(w, i - 1))
        invalid("the column indices of row " + std::to_string(n) + " must be strictly increasing");
    }
  }
}

void spmm_nm(const NMSparseWeight& w, const float* x, int64_t M, const float* bias, float* y, CpuIsa isa) {
  if (M < 0) invalid("M must be >= 0");
  if (M == 0) return;
  const cpu::SpmmKernels& kernels = cpu::spmm_kernels_for(isa);
  if (M < kSpmmGemmRows) {
    parallel_for(w.N, [&](int64_t n0, int64_t n1) { kernels.nm_rows(w, x, M, y, n0, n1); });
    return add_bias(bias, M, w.N, y);
  }
  spmm_transposed(w.N, w.K, x, M, bias, y, kernels,
                  [&](int64_t n, int64_t k0, int64_t k1, float* vals, int32_t* cols, const float** v,
                      const int32_t** c, int64_t* count) {
                    *count = kernels.nm_decode(w, n, k0, k1, vals, cols);
                    *v = vals;
                    *c = cols;
                  });
}

void spmm_csr(const CsrWeight& w, const float* x, int64_t M, const float* bias, float* y, CpuIsa isa) {
  if (M < 0) invalid("M must be >= 0");
  if (M == 0) return;
  const cpu::SpmmKernels& kernels = cpu::spmm_kernels_for(isa);
  if (M < kSpmmGemmRows) {
    parallel_for(w.N, [&](int64_t n0, int64_t n1) { kernels.csr_rows(w, x, M, y, n0, n1); });
    return add_bias(bias, M, w.N, y);
  }
  // A row's nonzeros in [k0, k1) are found by binary search over its sorted columns; int16
  // columns are widened for the kernel.
  spmm_transposed(w.N, w.K, x, M, bias, y, kernels,
                  [&](int64_t n, int64_t k0, int64_t k1, float*, int32_t* cols, const float** v, const int32_t** c,
                      int64_t* count) {
                    int64_t lo = w.row_ptr[n], hi = w.row_ptr[n + 1];
                    auto first_at_or_after = [&](int64_t k, int64_t a, int64_t b) {
                      while (a < b) {
                        const int64_t mid = (a + b) / 2;
                        if (cpu::csr_column(w, mid) < k) a = mid + 1; else b = mid;
                      }
                      return a;
                    };
                    lo = first_at_or_after(k0, lo, hi);
                    hi = first_at_or_after(k1, lo, hi);
                    *count = hi - lo;
                    *v = w.values + lo;
                    if (w.cols16) {
                      const int16_t* src = static_cast<const int16_t*>(w.cols) + lo;
                      for (int64_t i = 0; i < hi - lo; ++i) cols[i] = src[i];
                      *c = cols;
                    } else {
                      *c = static_cast<const int32_t*>(w.cols) + lo;
                    }
                  });
}

}  // namespace slmops
