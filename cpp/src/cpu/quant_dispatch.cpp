// The quantize/dequantize drivers: pick the kernel set once, split rows over threads,
// convert fp16/bf16 rows through a per-thread fp32 buffer, and compute the per-tensor
// ternary scale. Baseline compiler flags only.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/half.h"
#include "cpu/isa_dispatch.h"
#include "cpu/quant_common.h"
#include "cpu/row_kernels.h"
#include "slmops/quant.h"
#include "slmops/threading.h"

namespace slmops {

const cpu::RowKernels& cpu::row_kernels_for(CpuIsa isa) {
  return kernels_for_isa<RowKernels>(isa, SLMOPS_CPU_ISA_KERNELS(row_kernels));
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

// The GGUF blocks store their scales as fp16: a finite weight whose block needs a scale past
// 65504 would get an Inf scale and dequantize to Inf/NaN. Per format: the byte offsets of
// the fp16 scales in a block, and the largest magnitude every weight can have (65504 times
// the largest code that multiplies the scale that overflows first).
struct F16BlockScales {
  int count = 0;
  int offset[2] = {0, 0};
  const char* max_magnitude = "";
};

F16BlockScales f16_block_scales(QuantFormat f) {
  switch (f) {
    case QuantFormat::kQ4_0: return {1, {0, 0}, "524032 (8 x 65504)"};
    case QuantFormat::kQ8_0: return {1, {0, 0}, "8319008 (127 x 65504)"};
    case QuantFormat::kQ4_K: return {2, {0, 2}, "4126752 (63 x 65504, the block minimum's limit)"};
    case QuantFormat::kQ6_K: return {1, {208, 0}, "268304384 (4096 x 65504)"};
    case QuantFormat::kTQ2_0: return {1, {64, 0}, "65504"};
    default: return {};
  }
}

// The first block (GGUF) or group of a quantized row whose scale is not finite, or -1.
int64_t first_bad_scale(const QuantLayout& L, const F16BlockScales& f16, int block_bytes, const cpu::RowDst& d) {
  if (f16.count) {
    for (int64_t b = 0; b < L.groups_per_row; ++b)
      for (int i = 0; i < f16.count; ++i) {
        uint16_t h;
        std::memcpy(&h, d.data + b * block_bytes + f16.offset[i], 2);
        if ((h & 0x7c00u) == 0x7c00u) return b;
      }
  } else if (d.scales) {
    for (int64_t g = 0; g < L.scales_per_row; ++g)
      if (!std::isfinite(d.scales[g])) return g;
  }
  return -1;
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
  const QuantFormatInfo& info = quant_format_info(spec.format);
  const F16BlockScales f16 = f16_block_scales(spec.format);
  std::vector<int64_t> bad_scale(size_t(rows), -1);
  parallel_for(rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(src_dtype == DType::kF32 ? 0 : size_t(K));
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = row_as_f32(k, src, src_dtype, r, K, buf);
      cpu::RowDst d{dst.data + r * L.data_bytes_per_row, L.tensor_scale ? nullptr : dst.scales + r * L.scales_per_row,
                    dst.zero_points + r * L.zero_point_bytes_per_row};
      fn(x, K, p, d);
      bad_scale[size_t(r)] = first_bad_scale(L, f16, info.block_bytes, d);
    }
  });
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t g = bad_scale[size_t(r)];
    if (g < 0) continue;
    const int64_t G = L.group_size ? L.group_size : K;
    const std::string where = "row " + std::to_string(r) + ", columns " + std::to_string(g * G) + "-" +
                              std::to_string(g * G + std::min(G, K - g * G) - 1);  // g * G < K: no overflow
    if (f16.count)
      throw std::invalid_argument(std::string("format '") + info.name + "': the weights of " + where +
                                  " need a float16 block scale past 65504 (the largest float16); " + info.name +
                                  " represents weights of magnitude up to " + f16.max_magnitude +
                                  ". Scale the weight down, or use a format with float32 scales (int8, int4, nf4)");
    throw std::invalid_argument(std::string("format '") + info.name + "': the scale of " + where +
                                " overflows float32 (the weights' range exceeds 3.4e38); scale the weight down");
  }
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

std::vector<uint8_t> cpu::non_finite_rows(const float* x, int64_t M, int64_t K) {
  std::vector<uint8_t> rows(size_t(M), 0);
  parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      bool bad = false;  // a branch-free scan that vectorizes: false for NaN and +-Inf
      for (int64_t k = 0; k < K; ++k) bad |= !(std::fabs(x[m * K + k]) <= std::numeric_limits<float>::max());
      rows[size_t(m)] = bad;
    }
  });
  if (std::find(rows.begin(), rows.end(), 1) == rows.end()) rows.clear();
  return rows;
}

void cpu::fill_nan_rows(const std::vector<uint8_t>& rows, int64_t N, float* y) {
  for (size_t m = 0; m < rows.size(); ++m)
    if (rows[m]) std::fill(y + int64_t(m) * N, y + (int64_t(m) + 1) * N, std::numeric_limits<float>::quiet_NaN());
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
    const float inv = cpu::inv_or_zero(1.0f, scale);
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
