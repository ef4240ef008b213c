// The one table of quantization formats, and the storage layout each implies.
#include <stdexcept>
#include <string>

#include "common/checked_int.h"
#include "cpu/quant_common.h"
#include "slmops/quant.h"

namespace slmops {

const float kNF4Codebook[16] = {cpu::kNF4[0],  cpu::kNF4[1],  cpu::kNF4[2],  cpu::kNF4[3], cpu::kNF4[4],  cpu::kNF4[5],
                                cpu::kNF4[6],  cpu::kNF4[7],  cpu::kNF4[8],  cpu::kNF4[9], cpu::kNF4[10], cpu::kNF4[11],
                                cpu::kNF4[12], cpu::kNF4[13], cpu::kNF4[14], cpu::kNF4[15]};

namespace {

// format, name, bits, block_size, block_bytes, has_group_size, has_symmetric, default group
constexpr QuantFormatInfo kFormats[kNumQuantFormats] = {
    {QuantFormat::kInt8, "int8", 8, 0, 0, true, false, 0},
    {QuantFormat::kInt4, "int4", 4, 0, 0, true, true, 32},
    {QuantFormat::kNF4, "nf4", 4, 0, 0, true, false, 64},
    {QuantFormat::kTernary, "ternary", 2, 0, 0, false, false, 0},
    {QuantFormat::kQ4_0, "q4_0", 4, cpu::kQK4_0, cpu::kQ4_0Bytes, false, false, 0},
    {QuantFormat::kQ8_0, "q8_0", 8, cpu::kQK8_0, cpu::kQ8_0Bytes, false, false, 0},
    {QuantFormat::kQ4_K, "q4_k", 4, cpu::kQK_K, cpu::kQ4_KBytes, false, false, 0},
    {QuantFormat::kQ6_K, "q6_k", 6, cpu::kQK_K, cpu::kQ6_KBytes, false, false, 0},
    {QuantFormat::kTQ2_0, "tq2_0", 2, cpu::kQK_K, cpu::kTQ2_0Bytes, false, false, 0},
};

bool is_power_of_two(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

std::string format_names() {
  std::string s;
  for (const auto& f : kFormats) s += std::string(s.empty() ? "" : ", ") + "'" + f.name + "'";
  return s;
}

}  // namespace

const QuantFormatInfo& quant_format_info(QuantFormat f) {
  const int i = static_cast<int>(f);
  if (i < 0 || i >= kNumQuantFormats) throw std::invalid_argument("unknown quantization format id");
  return kFormats[i];
}

QuantFormat quant_format_from_name(const std::string& name) {
  for (const auto& f : kFormats)
    if (name == f.name) return f.format;
  throw std::invalid_argument("unknown quantization format '" + name + "'; expected one of " + format_names());
}

QuantLayout quant_layout(const QuantSpec& spec, int64_t K) {
  const QuantFormatInfo& info = quant_format_info(spec.format);
  const std::string fmt = std::string("format '") + info.name + "'";
  if (K <= 0) throw std::invalid_argument(fmt + ": K (in_features) must be positive, got " + std::to_string(K));
  if (!spec.symmetric && !info.has_symmetric_option)
    throw std::invalid_argument(fmt + " is symmetric only; symmetric=False is supported by 'int4'");
  if (spec.group_size != 0 && !info.has_group_size)
    throw std::invalid_argument(fmt + " has a fixed block size; do not pass group_size");

  QuantLayout L{};
  L.group_size = spec.group_size ? spec.group_size : info.default_group_size;
  switch (spec.format) {
    case QuantFormat::kInt8:
      if (L.group_size != 0 && L.group_size < 1)
        throw std::invalid_argument(fmt + ": group_size must be positive, got " + std::to_string(L.group_size));
      L.groups_per_row = L.group_size ? ceil_div(K, L.group_size) : 1;
      L.data_bytes_per_row = K;
      L.scales_per_row = L.groups_per_row;
      break;
    case QuantFormat::kInt4:
      if (!is_power_of_two(L.group_size) || L.group_size < 16)
        throw std::invalid_argument(fmt + ": group_size must be a power of two >= 16 (MatMulNBits block_size), got " +
                                    std::to_string(L.group_size));
      L.groups_per_row = ceil_div(K, L.group_size);  // last group zero-padded
      L.data_bytes_per_row =
          checked_mul(L.groups_per_row, L.group_size / 2, "int4 bytes per row (groups * group_size / 2)");
      L.scales_per_row = L.groups_per_row;
      L.zero_point_bytes_per_row = spec.symmetric ? 0 : ceil_div(L.groups_per_row, 2);
      break;
    case QuantFormat::kNF4:
      if (!is_power_of_two(L.group_size) || L.group_size < 16)
        throw std::invalid_argument(fmt + ": group_size must be a power of two >= 16, got " +
                                    std::to_string(L.group_size));
      if (K % L.group_size != 0)
        throw std::invalid_argument(fmt + ": K (in_features) = " + std::to_string(K) +
                                    " is not a multiple of group_size " + std::to_string(L.group_size) +
                                    "; choose a group_size that divides K");
      L.groups_per_row = K / L.group_size;
      L.data_bytes_per_row = K / 2;
      L.scales_per_row = L.groups_per_row;
      break;
    case QuantFormat::kTernary:
      L.groups_per_row = 1;
      L.data_bytes_per_row = ceil_div(K, 4);
      L.tensor_scale = true;
      break;
    default:  // GGUF block formats
      L.group_size = info.block_size;
      if (K % info.block_size != 0)
        throw std::invalid_argument(fmt + ": K (in_features) = " + std::to_string(K) + " must be a multiple of " +
                                    std::to_string(info.block_size) + " (the GGUF block size)");
      L.groups_per_row = K / info.block_size;
      L.data_bytes_per_row =
          checked_mul(L.groups_per_row, info.block_bytes, "GGUF bytes per row (blocks * block bytes)");
      break;
  }
  return L;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
  }
  return "?";
}

}  // namespace slmops
