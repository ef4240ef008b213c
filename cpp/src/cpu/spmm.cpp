// Sparse matmul drivers: layout validation, the split of output rows over threads, the
// choice between the few-rows kernels and the transposed many-rows path, bias. Baseline
// compiler flags only.
#include "slmops/spmm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/checked_int.h"
#include "cpu/isa_dispatch.h"
#include "cpu/row_kernels.h"
#include "cpu/spmm_kernels.h"
#include "slmops/qmatmul.h"
#include "slmops/threading.h"

namespace slmops {

const cpu::SpmmKernels& cpu::spmm_kernels_for(CpuIsa isa) {
  return kernels_for_isa<SpmmKernels>(isa, SLMOPS_CPU_ISA_KERNELS(spmm_kernels));
}

namespace {

void invalid(const std::string& what) { throw std::invalid_argument(what); }

// The many-rows path, one slice of up to 128 activation rows at a time: xT [K, S] (the
// slice transposed, padded to S rows with zeros), then per block of 32 output rows:
//  - their kept weights are decoded 512 columns at a time: a row's values are read in runs
//    long enough for the hardware prefetcher (64 columns a row defeat it: weights then
//    arrive at DRAM latency), into scratch that stays in L2;
//  - per 64-column block of those, each row's kept weights are broadcast against the whole
//    slice (8 zmm accumulators): that block of xT (32 KiB at S = 128) stays in L1 while the
//    32 rows sweep it, their accumulators (16 KiB) next to it.
// Buffers are thread-local and kept between calls: fresh pages for a multi-MiB xT cost as
// much as the products at small shapes.
// `decode(n0, n1, k0, k1, panel)` fills the panel for rows [n0, n1) and columns [k0, k1).
constexpr int64_t kSliceRows = 128, kRowsPerBlock = 32, kColsPerBlock = 64, kColBlocksPerDecode = 8;

// A float buffer whose rows of 16 start on cache lines: xT and the accumulators are read in
// 64-byte vectors, and one that straddles two lines costs two loads.
struct AlignedFloats {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> data_;
  size_t size_ = 0;
  void resize(size_t n) {
    if (n <= size_) return;
    data_.reset(static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64)));
    if (!data_) throw std::bad_alloc();
    size_ = n;
  }
  float* data() { return data_.get(); }
  float& operator[](size_t i) { return data_.get()[i]; }
};

struct DecodedPanel {
  static constexpr int64_t kStride = kColsPerBlock * kColBlocksPerDecode;  // scratch per row
  std::vector<float> vals = std::vector<float>(size_t(kRowsPerBlock * kStride));
  std::vector<int32_t> cols = std::vector<int32_t>(size_t(kRowsPerBlock * kStride));
  // Row r's kept weights in column block b of the decoded range: count, values, columns.
  int64_t count[kRowsPerBlock][kColBlocksPerDecode];
  const float* v[kRowsPerBlock][kColBlocksPerDecode];
  const int32_t* c[kRowsPerBlock][kColBlocksPerDecode];
};

// x rows [m0, m0 + rows) transposed into xT [K, S], in 16 x 16 tiles (both sides stay in cache).
void transpose_slice(const float* x, int64_t K, int64_t m0, int64_t rows, int64_t S, float* xT) {
  parallel_for((K + 15) / 16, [&](int64_t t0, int64_t t1) {
    for (int64_t k0 = t0 * 16; k0 < std::min(K, t1 * 16); k0 += 16) {
      const int64_t k1 = std::min(K, k0 + 16);
      for (int64_t mb = 0; mb < S; mb += 16)
        for (int64_t k = k0; k < k1; ++k)
          for (int64_t m = mb; m < mb + 16; ++m) xT[k * S + m] = m < rows ? x[(m0 + m) * K + k] : 0.0f;
    }
  });
}

template <class Decode>
void spmm_transposed(int64_t N, int64_t K, const float* x, int64_t M, const float* bias, float* y,
                     const cpu::SpmmKernels& kernels, const Decode& decode) {
  thread_local AlignedFloats xT_buffer;  // the calling thread's; the workers get a pointer
  for (int64_t m0 = 0; m0 < M; m0 += kSliceRows) {
    const int64_t rows = std::min(kSliceRows, M - m0), S = (rows + 15) / 16 * 16;
    xT_buffer.resize(static_cast<size_t>(K * S));
    const float* xT = xT_buffer.data();
    transpose_slice(x, K, m0, rows, S, xT_buffer.data());
    const int64_t blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
    parallel_for(blocks, [&](int64_t b0, int64_t b1) {
      thread_local AlignedFloats acc;
      thread_local std::unique_ptr<DecodedPanel> panel;
      acc.resize(static_cast<size_t>(kRowsPerBlock * S));
      if (!panel) panel = std::make_unique<DecodedPanel>();
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n0 = b * kRowsPerBlock, n1 = std::min(N, n0 + kRowsPerBlock);
        std::fill(acc.data(), acc.data() + kRowsPerBlock * S, 0.0f);
        for (int64_t k0 = 0; k0 < K; k0 += DecodedPanel::kStride) {
          const int64_t k1 = std::min(K, k0 + DecodedPanel::kStride);
          decode(n0, n1, k0, k1, *panel);
          for (int64_t cb = 0; cb * kColsPerBlock < k1 - k0; ++cb)
            for (int64_t r = 0; r < n1 - n0; ++r)
              kernels.accumulate(panel->v[r][cb], panel->c[r][cb], panel->count[r][cb], xT, S, S, &acc[size_t(r * S)]);
        }
        for (int64_t m = 0; m < rows; ++m)
          for (int64_t n = n0; n < n1; ++n)
            y[(m0 + m) * N + n] = acc[size_t((n - n0) * S + m)] + (bias ? bias[n] : 0.0f);
      }
    });
  }
}

void add_bias(const float* bias, int64_t M, int64_t N, float* y) {
  if (!bias) return;
  parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] += bias[n];
  });
}

// Activation rows quantized as qmatmul's int8 mode does (blocks of kActBlock = 32,
// symmetric, absmax / 127, half to even) by the int8 format's row kernel: the integer
// kernel's window layout (SpmmInt8Rows) when it will run, else x^ for the float kernels.
struct Int8Activations {
  std::vector<int8_t> windows;
  std::vector<float> lane_scales, xhat;
  int64_t windows_per_row = 0;
};

Int8Activations quantize_activations(const float* x, int64_t M, int64_t K, CpuIsa isa, bool windows, bool xhat,
                                     const std::vector<uint8_t>& bad_rows) {
  constexpr int64_t kBlock = kActBlock, kWindow = 128, kLanes = 16;
  const cpu::RowKernels& rows = cpu::row_kernels_for(isa);
  Int8Activations a;
  a.windows_per_row = (K + kWindow - 1) / kWindow;
  const int64_t Kp = a.windows_per_row * kWindow, blocks = Kp / kBlock;
  if (xhat) a.xhat.assign(size_t(M * K), 0.0f);
  if (windows) {
    a.windows.assign(size_t(M * Kp), 0);
    a.lane_scales.assign(size_t(M * a.windows_per_row * kLanes), 0.0f);
  }
  parallel_for(M, [&](int64_t m0, int64_t m1) {
    std::vector<int8_t> q(size_t(Kp), 0);
    std::vector<float> s(size_t(blocks), 0.0f);
    for (int64_t m = m0; m < m1; ++m) {
      if (!bad_rows.empty() && bad_rows[size_t(m)]) continue;  // stays zero; its y row is NaN
      rows.quantize[int(QuantFormat::kInt8)](x + m * K, K, cpu::RowParams{kBlock, true, 0.0f},
                                             {reinterpret_cast<uint8_t*>(q.data()), s.data(), nullptr});
      if (xhat)
        for (int64_t k = 0; k < K; ++k) a.xhat[size_t(m * K + k)] = float(q[size_t(k)]) * s[size_t(k / kBlock)];
      if (!windows) continue;
      int8_t* win = &a.windows[size_t(m * Kp)];
      float* lanes = &a.lane_scales[size_t(m * a.windows_per_row * kLanes)];
      for (int64_t t = 0; t < a.windows_per_row; ++t) {
        // Lane L of the first half: columns 32L..32L+15 of the window; of the second: 32L+16..
        for (int64_t half = 0; half < 2; ++half)
          for (int64_t L = 0; L < 4; ++L)
            std::memcpy(win + t * kWindow + half * 64 + L * 16, q.data() + t * kWindow + 32 * L + 16 * half, 16);
        for (int64_t l = 0; l < kLanes; ++l) lanes[t * kLanes + l] = s[size_t(4 * t + l / 4)];
      }
    }
  });
  return a;
}

}  // namespace

NMSparseWeight nm_layout(int64_t N, int64_t K, int n, int m, SparseValueType type, int64_t group) {
  if (std::none_of(std::begin(kNMPatterns), std::end(kNMPatterns),
                   [&](const NMPattern& p) { return p.n == n && p.m == m; })) {
    std::string known;
    for (const NMPattern& p : kNMPatterns) {
      if (!known.empty()) known += &p == std::end(kNMPatterns) - 1 ? " or " : ", ";
      known += std::to_string(p.n) + ":" + std::to_string(p.m);
    }
    invalid("pattern must be " + known + ", got " + std::to_string(n) + ":" + std::to_string(m));
  }
  if (N <= 0 || K <= 0) invalid("the weight must have at least one row and one column");
  if (K % m) invalid("in_features (" + std::to_string(K) + ") must be a multiple of " + std::to_string(m));
  NMSparseWeight w;
  w.N = N;
  w.K = K;
  w.n = n;
  w.m = m;
  w.type = type;
  const int64_t kept = w.kept();
  checked_mul(N, kept, "rows * kept values");
  checked_mul(N, w.index_row_bytes(), "rows * index bytes");
  if (type == SparseValueType::kInt8 || type == SparseValueType::kInt4) {
    w.group = group ? group : kept;
    if (w.group != kept && (w.group < 0 || w.group % 16))
      invalid("the quantization group of sparse values must be a multiple of 16 kept values or the whole row, got " +
              std::to_string(group));
    checked_mul(N, w.groups(), "rows * groups");
    if (type == SparseValueType::kInt4)
      checked_mul(N, checked_mul(w.groups(), w.group / 2, "int4 bytes per row"), "rows * int4 bytes per row");
  }
  return w;
}

NMSparseWeight make_nm_weight(int64_t N, int64_t K, int n, int m, SparseValueType type, const void* values,
                              const float* scales, const uint8_t* zero_points, int64_t group, const uint8_t* indices) {
  NMSparseWeight w = nm_layout(N, K, n, m, type, group);
  w.values = values;
  w.indices = indices;
  if (!values || !indices) invalid("values and indices are required");
  if (type == SparseValueType::kInt8 || type == SparseValueType::kInt4) {
    if (!scales) invalid("int8 and int4 values need their scales");
    w.scales = scales;
    if (type == SparseValueType::kInt4 && zero_points) {
      const int64_t groups = w.groups(), zp_bytes = (groups + 1) / 2;
      w.offsets.resize(size_t(N * groups));
      for (int64_t r = 0; r < N; ++r)
        for (int64_t g = 0; g < groups; ++g) {
          const int zp = (zero_points[r * zp_bytes + g / 2] >> ((g & 1) * 4)) & 0xF;
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
  // All row pointers first: only when they rise from 0 to nnz does every row's range lie
  // inside the [nnz] column and value buffers, and may the column pass read them.
  for (int64_t n = 0; n < w.N; ++n)
    if (w.row_ptr[n + 1] < w.row_ptr[n])
      invalid("row_ptr must not decrease: row_ptr[" + std::to_string(n + 1) +
              "] = " + std::to_string(w.row_ptr[n + 1]) + " < row_ptr[" + std::to_string(n) +
              "] = " + std::to_string(w.row_ptr[n]));
  for (int64_t n = 0; n < w.N; ++n) {
    const int64_t begin = w.row_ptr[n], end = w.row_ptr[n + 1];
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

namespace {

void spmm_nm_paths(const NMSparseWeight& w, const float* x, int64_t M, const float* bias, float* y, CpuIsa isa,
                   SpmmActivation act, const std::vector<uint8_t>& bad_rows) {
  const cpu::SpmmKernels& kernels = cpu::spmm_kernels_for(isa);
  Int8Activations xq;
  if (act == SpmmActivation::kInt8) {
    if (w.type != SparseValueType::kInt8 && w.type != SparseValueType::kInt4)
      invalid("int8 activations need int8 or int4 sparse values (float values multiply float activations)");
    const bool integer_kernel = M < kSpmmInt8GemmRows && kernels.nm_rows_int8 && cpu::spmm_int8_kernel_takes(w);
    xq = quantize_activations(x, M, w.K, isa, integer_kernel, !integer_kernel, bad_rows);
    if (integer_kernel) {
      const cpu::SpmmInt8Rows rows{xq.windows.data(), xq.lane_scales.data(), xq.xhat.data(), xq.windows_per_row};
      parallel_for(w.N, [&](int64_t n0, int64_t n1) { kernels.nm_rows_int8(w, rows, M, y, n0, n1); });
      return add_bias(bias, M, w.N, y);
    }
    x = xq.xhat.data();  // the float kernels on the dequantized activations: the same product
  }
  if (M < kSpmmGemmRows) {
    parallel_for(w.N, [&](int64_t n0, int64_t n1) { kernels.nm_rows(w, x, M, y, n0, n1); });
    return add_bias(bias, M, w.N, y);
  }
  spmm_transposed(w.N, w.K, x, M, bias, y, kernels,
                  [&](int64_t n0, int64_t n1, int64_t k0, int64_t k1, DecodedPanel& p) {
                    kernels.nm_decode(w, n0, n1, k0, k1, p.vals.data(), p.cols.data(), p.kStride);
                    for (int64_t r = 0; r < n1 - n0; ++r)
                      for (int64_t cb = 0; cb * kColsPerBlock < k1 - k0; ++cb) {
                        const int64_t at = r * p.kStride + cb * kColsPerBlock / w.m * w.n;
                        p.v[r][cb] = p.vals.data() + at;
                        p.c[r][cb] = p.cols.data() + at;
                        p.count[r][cb] = std::min(kColsPerBlock, k1 - k0 - cb * kColsPerBlock) / w.m * w.n;
                      }
                  });
}

void spmm_csr_paths(const CsrWeight& w, const float* x, int64_t M, const float* bias, float* y, CpuIsa isa) {
  const cpu::SpmmKernels& kernels = cpu::spmm_kernels_for(isa);
  if (M < kSpmmGemmRows) {
    parallel_for(w.N, [&](int64_t n0, int64_t n1) { kernels.csr_rows(w, x, M, y, n0, n1); });
    return add_bias(bias, M, w.N, y);
  }
  // A row's nonzeros in a column block are found by binary search over its sorted columns;
  // int16 columns are widened for the kernel.
  spmm_transposed(w.N, w.K, x, M, bias, y, kernels,
                  [&](int64_t n0, int64_t n1, int64_t k0, int64_t k1, DecodedPanel& p) {
                    auto first_at_or_after = [&](int64_t k, int64_t a, int64_t b) {
                      while (a < b) {
                        const int64_t mid = (a + b) / 2;
                        if (cpu::csr_column(w, mid) < k)
                          a = mid + 1;
                        else
                          b = mid;
                      }
                      return a;
                    };
                    for (int64_t n = n0; n < n1; ++n) {
                      const int64_t r = n - n0, end = w.row_ptr[n + 1];
                      const int64_t first = first_at_or_after(k0, w.row_ptr[n], end);
                      int64_t lo = first;
                      for (int64_t cb = 0; cb * kColsPerBlock < k1 - k0; ++cb) {
                        const int64_t hi = first_at_or_after(std::min(k1, k0 + (cb + 1) * kColsPerBlock), lo, end);
                        p.count[r][cb] = hi - lo;
                        p.v[r][cb] = w.values + lo;
                        if (w.cols16) {
                          int32_t* dst = p.cols.data() + r * p.kStride + (lo - first);
                          const int16_t* src = static_cast<const int16_t*>(w.cols) + lo;
                          for (int64_t i = 0; i < hi - lo; ++i) dst[i] = src[i];
                          p.c[r][cb] = dst;
                        } else {
                          p.c[r][cb] = static_cast<const int32_t*>(w.cols) + lo;
                        }
                        lo = hi;
                      }
                    }
                  });
}

}  // namespace

// A NaN or Inf in a row of x makes that whole row of y NaN on every path (see
// cpu::non_finite_rows): a sparse row would otherwise propagate it only to the outputs whose
// weights touch its column, and the int8 mode not at all.
void spmm_nm(const NMSparseWeight& w, const float* x, int64_t M, const float* bias, float* y, CpuIsa isa,
             SpmmActivation act) {
  if (M < 0) invalid("M must be >= 0");
  if (M == 0) return;
  const std::vector<uint8_t> bad_rows = cpu::non_finite_rows(x, M, w.K);
  spmm_nm_paths(w, x, M, bias, y, isa, act, bad_rows);
  cpu::fill_nan_rows(bad_rows, w.N, y);
}

void spmm_csr(const CsrWeight& w, const float* x, int64_t M, const float* bias, float* y, CpuIsa isa) {
  if (M < 0) invalid("M must be >= 0");
  if (M == 0) return;
  const std::vector<uint8_t> bad_rows = cpu::non_finite_rows(x, M, w.K);
  spmm_csr_paths(w, x, M, bias, y, isa);
  cpu::fill_nan_rows(bad_rows, w.N, y);
}

}  // namespace slmops
