// The quantization cases and test weights shared by the CPU and CUDA kernel tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "slmops/quant.h"

namespace slmops::test_cases {

struct Case {
  QuantFormat format;
  int64_t group_size;
  bool symmetric;
};

inline std::string case_name(const Case& c) {
  std::string s = quant_format_info(c.format).name;
  if (c.group_size) s += "_g" + std::to_string(c.group_size);
  if (!c.symmetric) s += "_asym";
  return s;
}

inline const Case kCases[] = {
    {QuantFormat::kInt8, 0, true},    {QuantFormat::kInt8, 32, true},  {QuantFormat::kInt4, 16, true},
    {QuantFormat::kInt4, 32, true},   {QuantFormat::kInt4, 64, false}, {QuantFormat::kInt4, 128, true},
    {QuantFormat::kInt4, 128, false}, {QuantFormat::kNF4, 64, true},   {QuantFormat::kNF4, 16, true},
    {QuantFormat::kTernary, 0, true}, {QuantFormat::kQ4_0, 0, true},   {QuantFormat::kQ8_0, 0, true},
    {QuantFormat::kQ4_K, 0, true},    {QuantFormat::kQ6_K, 0, true},   {QuantFormat::kTQ2_0, 0, true},
};

// K values: tails for the formats that allow any K, block multiples for the rest.
inline std::vector<int64_t> k_values(const Case& c) {
  const QuantFormatInfo& info = quant_format_info(c.format);
  if (info.block_size) return {int64_t(info.block_size), 3LL * info.block_size, 7LL * info.block_size};
  if (c.format == QuantFormat::kNF4) return {c.group_size, 3 * c.group_size, 11 * c.group_size};
  return {1, 3, 7, 31, 33, 65, 127, 1000};
}

// Weights with the features that break kernels: an all-zero row group, exact ties at
// +-max, values at rounding midpoints, and a heavy outlier.
inline std::vector<float> make_weights(int64_t rows, int64_t K, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> w(size_t(rows * K));
  for (auto& v : w) v = nd(rng);
  if (rows > 1) std::fill(w.begin() + K, w.begin() + 2 * K, 0.0f);  // row 1 all zero
  if (K >= 4) {
    w[0] = 0.25f;
    w[1] = -0.25f;  // tie in magnitude with the opposite sign
    w[2] = 0.125f;
  }
  if (rows > 2) w[size_t(2 * K)] = 4.0f;  // outlier
  // Rows whose step is exactly 1 (absmax 127 for the 8-bit formats, signed max -8 for the
  // 4-bit ones), filled with k + 0.5: every element is a rounding tie, so a kernel with the
  // wrong tie rule (half even vs half away vs truncation) cannot pass.
  for (int64_t r = 3; r < std::min<int64_t>(rows, 5); ++r) {
    for (int64_t i = 0; i < K; ++i) w[size_t(r * K + i)] = float(int(i % 7) - 3) + 0.5f;
    for (int64_t i = 0; i < K; i += 16) w[size_t(r * K + i)] = r == 3 ? 127.0f : -8.0f;
  }
  return w;
}

// One quantized weight's buffers, sized by quant_layout.
struct Quantized {
  std::vector<uint8_t> data, zero_points;
  std::vector<float> scales;
  ConstQuantStorage storage() const { return {data.data(), scales.data(), zero_points.data()}; }
};

// Quantizes src [rows, K] into poisoned buffers (every byte the kernel owns must be written).
inline Quantized quantize_with(const QuantSpec& spec, const void* src, DType dtype, int64_t rows, int64_t K,
                               CpuIsa isa) {
  const QuantLayout L = quant_layout(spec, K);
  Quantized q;
  q.data.assign(size_t(rows * L.data_bytes_per_row), 0xAB);
  q.scales.assign(L.tensor_scale ? 1 : size_t(rows * L.scales_per_row), -1.0f);
  q.zero_points.assign(size_t(rows * L.zero_point_bytes_per_row), 0xAB);
  quantize(spec, src, dtype, rows, K, {q.data.data(), q.scales.data(), q.zero_points.data()}, isa);
  return q;
}

inline std::vector<float> dequantize_with(const QuantSpec& spec, const Quantized& q, int64_t rows, int64_t K,
                                          CpuIsa isa) {
  std::vector<float> out(size_t(rows * K), NAN);
  dequantize(spec, q.storage(), rows, K, out.data(), DType::kF32, isa);
  return out;
}

}  // namespace slmops::test_cases
