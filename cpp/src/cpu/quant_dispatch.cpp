// The quantize/dequantize drivers: pick the kernel set once, split rows over threads,
// convert fp16/bf16 rows through a per-thread fp32 buffer, and compute the per-tensor
// ternary scale. Baseline compiler flags only.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/half.h"
#include "cpu/row_kernels.h"
#include "slmops/quant.h"
#include "slmops/threading.h"

namespace slmops {

const cpu::RowKernels& cpu::row_kernels_for(CpuIsa isa) {
  switch (resolve_cpu_isa(isa)) {
#ifdef SLMOPS_HAVE_AVX512
    case CpuIsa::kAvx512: return avx512::row_kernels();
#endif
#ifdef SLMOPS_HAVE_AVX2
    case CpuIsa::kAvx2: return avx2::row_kernels();
#endif
    default: return ref::row_kernels();
  }
}

namespace {

// Row r of src [rows, K] as fp32: a pointer into src, or the row converted into buf.
const float* row_as_f32(const cpu::RowKernels& k, const void* src, DType dtype, int64_t r, int64_t K,
                        std::vector<float>& buf) {
  if (dtype == DType::kF32) return static_cast<const float*>(src) + r * K;
  const auto* row = static_cast<const uint16_t*>(src) + r * K;
  (dtype == DType::kF16 ? k.f16_to_f32 : k.bf16_to_f32)(row, K, buf.data());
  return buf.data();
}

// BitNet b1.58 absmean, clamped as the reference training code does (min 1e-5). Summed
// per row in double and then over rows in order, so the result does not depend on the
// ISA or the thread count: every kernel set then sees the same scale bits.
float ternary_scale(const cpu::RowKernels& k, const void* src, DType dtype, int64_t rows, int64_t K) {
  std::vector<double> row_sums(size_t(rows), 0.0);
  parallel_for(rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(static_cast<size_t>(K));
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = row_as_f32(k, src, dtype, r, K, buf);
      double s = 0.0;
      for (int64_t i = 0; i < K; ++i) s += std::fabs(double(x[i]));
      row_sums[size_t(r)] = s;
    }
  });
  double total = 0.0;
  for (double s : row_sums) total += s;
  return std::max(float(total / double(rows * K)), 1e-5f);
}

cpu::RowParams row_params(const QuantSpec& spec, const QuantLayout& L) {
  return cpu::RowParams{L.group_size, spec.symmetric, 0.0f};
}

}  // namespace

void quantize(const QuantSpec& spec, const void* src, DType src_dtype, int64_t rows, int64_t K, QuantStorage dst,
              CpuIsa isa) {
  const QuantLayout L = quant_layout(spec, K);
  if (rows < 0) throw std::invalid_argument("rows must be >= 0");
  const cpu::RowKernels& k = cpu::row_kernels_for(isa);
  const cpu::QuantizeRowFn fn = k.quantize[static_cast<int>(spec.format)];
  cpu::RowParams p = row_params(spec, L);
  if (L.tensor_scale) {
    if (rows == 0) return;
    p.tensor_scale = ternary_scale(k, src, src_dtype, rows, K);
    dst.scales[0] = p.tensor_scale;
  }
  parallel_for(rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(src_dtype == DType::kF32 ? 0 : size_t(K));
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = row_as_f32(k, src, src_dtype, r, K, buf);
      cpu::RowDst d{dst.data + r * L.data_bytes_per_row,
                    L.tensor_scale ? nullptr : dst.scales + r * L.scales_per_row,
                    dst.zero_points + r * L.zero_point_bytes_per_row};
      fn(x, K, p, d);
    }
  });
}

void dequantize(const QuantSpec& spec, ConstQuantStorage src, int64_t rows, int64_t K, void* dst, DType dst_dtype,
                CpuIsa isa) {
  const QuantLayout L = quant_layout(spec, K);
  if (rows < 0) throw std::invalid_argument("rows must be >= 0");
  const cpu::RowKernels& k = cpu::row_kernels_for(isa);
  const cpu::DequantizeRowFn fn = k.dequantize[static_cast<int>(spec.format)];
  const cpu::RowParams p = row_params(spec, L);
  parallel_for(rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(dst_dtype == DType::kF32 ? 0 : size_t(K));
    for (int64_t r = r0; r < r1; ++r) {
      cpu::RowSrc s{src.data + r * L.data_bytes_per_row,
                    L.tensor_scale ? src.scales : src.scales + r * L.scales_per_row,
                    src.zero_points + r * L.zero_point_bytes_per_row};
      if (dst_dtype == DType::kF32) {
        fn(s, K, p, static_cast<float*>(dst) + r * K);
      } else {
        fn(s, K, p, buf.data());
        (dst_dtype == DType::kF16 ? k.f32_to_f16 : k.f32_to_bf16)(buf.data(), K, static_cast<uint16_t*>(dst) + r * K);
      }
    }
  });
}

int64_t find_non_finite(const void* src, DType dtype, int64_t n) {
  // Exponent all ones marks Inf and NaN in every float format; checking bits avoids
  // converting and is immune to -ffast-math assumptions. Threads scan contiguous chunks;
  // the first bad index of the earliest chunk is the answer, as in a serial scan.
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> first_bad(size_t(chunks), -1);
  parallel_for(chunks, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
      // A branch-free OR over the chunk vectorizes; the position is searched only on a hit.
      int64_t bad = -1;
      if (dtype == DType::kF32) {
        const auto* u = static_cast<const uint32_t*>(src);
        bool any = false;
        for (int64_t i = begin; i < end; ++i) any |= (u[i] & 0x7f800000u) == 0x7f800000u;
        for (int64_t i = begin; any && bad < 0; ++i)
          if ((u[i] & 0x7f800000u) == 0x7f800000u) bad = i;
      } else {
        const uint16_t mask = dtype == DType::kF16 ? 0x7c00 : 0x7f80;
        const auto* u = static_cast<const uint16_t*>(src);
        bool any = false;
        for (int64_t i = begin; i < end; ++i) any |= (u[i] & mask) == mask;
        for (int64_t i = begin; any && bad < 0; ++i)
          if ((u[i] & mask) == mask) bad = i;
      }
      first_bad[size_t(c)] = bad;
    }
  });
  for (int64_t bad : first_bad)
    if (bad >= 0) return bad;
  return -1;
}

void double_quantize_scales(const float* src, int64_t n, int8_t* codes, float* block_scales, float* offset) {
  if (n <= 0) {
    *offset = 0.0f;
    return;
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += src[i];
  const float off = float(sum / double(n));
  *offset = off;
  for (int64_t b0 = 0, bi = 0; b0 < n; b0 += kNF4DoubleQuantBlock, ++bi) {
    const int64_t m = std::min(kNF4DoubleQuantBlock, n - b0);
    float amax = 0.0f;
    for (int64_t i = 0; i < m; ++i) amax = std::max(amax, std::fabs(src[b0 + i] - off));
    const float scale = amax / 127.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    for (int64_t i = 0; i < m; ++i) {
      const float v = std::nearbyint((src[b0 + i] - off) * inv);
      codes[b0 + i] = int8_t(std::min(127.0f, std::max(-127.0f, v)));
    }
    block_scales[bi] = scale;
  }
}

void double_dequantize_scales(const int8_t* codes, const float* block_scales, float offset, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = float(codes[i]) * block_scales[i / kNF4DoubleQuantBlock] + offset;
}

}  // namespace slmops
