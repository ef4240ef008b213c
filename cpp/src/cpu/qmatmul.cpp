// Packing of quantized weights for the matmul kernels, and the qmatmul driver: activation
// conversion and int8 quantization, the split of output columns over threads, bias and
// output dtype. Baseline compiler flags only.
#include "slmops/qmatmul.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/half.h"
#include "cpu/isa_dispatch.h"
#include "cpu/qmatmul_kernels.h"
#include "cpu/quant_common.h"
#include "cpu/row_kernels.h"
#include "onednn/onednn_matmul.h"
#include "slmops/gemm.h"
#include "slmops/threading.h"

namespace slmops {
namespace {

float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// GGUF blocks interleave fp16 scales with the codes; the kernels want the codes of a row
// contiguous and the scales as fp32 (exact: every fp16 is an fp32).
void pack_q4_0(PackedWeight& p) {
  const int64_t blocks = p.K / cpu::kQK4_0;
  p.owned_codes.resize(size_t(p.N * blocks * 16));
  p.owned_scales.resize(size_t(p.N * blocks));
  p.owned_offsets.resize(size_t(p.N * blocks));
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = p.source.data + (n * blocks + b) * cpu::kQ4_0Bytes;
      std::memcpy(&p.owned_codes[size_t((n * blocks + b) * 16)], blk + 2, 16);
      const float d = f16_at(blk);
      p.owned_scales[size_t(n * blocks + b)] = d;
      p.owned_offsets[size_t(n * blocks + b)] = -8.0f * d;  // w = d*(q-8) = d*q - 8d
    }
}

void pack_q4_k(PackedWeight& p) {
  const int64_t blocks = p.K / cpu::kQK_K;
  p.owned_codes.resize(size_t(p.N * blocks * 128));
  p.owned_scales.resize(size_t(p.N * blocks * 8));
  p.owned_offsets.resize(size_t(p.N * blocks * 8));
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = p.source.data + (n * blocks + b) * cpu::kQ4_KBytes;
      std::memcpy(&p.owned_codes[size_t((n * blocks + b) * 128)], blk + 16, 128);
      const float d = f16_at(blk), dmin = f16_at(blk + 2);
      for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        cpu::q4k_unpack_scale(blk + 4, j, &sc, &m);
        p.owned_scales[size_t((n * blocks + b) * 8 + j)] = d * float(sc);
        p.owned_offsets[size_t((n * blocks + b) * 8 + j)] = -(dmin * float(m));
      }
    }
}

void pack_q8_0(PackedWeight& p) {
  const int64_t blocks = p.K / cpu::kQK8_0;
  p.owned_codes.resize(size_t(p.N * p.K));
  p.owned_scales.resize(size_t(p.N * blocks));
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = p.source.data + (n * blocks + b) * cpu::kQ8_0Bytes;
      std::memcpy(&p.owned_codes[size_t(n * p.K + b * 32)], blk + 2, 32);
      p.owned_scales[size_t(n * blocks + b)] = f16_at(blk);
    }
}

const cpu::QMatmulKernels& kernels_for(CpuIsa isa) {
  return cpu::kernels_for_isa<cpu::QMatmulKernels>(isa, SLMOPS_CPU_ISA_KERNELS(qmatmul_kernels));
}

// Rearranges 4-bit codes into the row panels described in qmatmul.h.
void pack_panels(PackedWeight& p) {
  constexpr int64_t R = PackedWeight::kPanelRows;
  const int64_t panels = (p.N + R - 1) / R;
  const int64_t elements = 2 * p.row_bytes;
  const bool table = p.kind == PackedKind::kNibbleTable;
  p.panel_octets = elements / 8;
  p.panel_codes.assign(size_t(panels * p.panel_octets * R * 4), 0);
  p.panel_scales.assign(size_t(panels * p.row_groups * R), 0.0f);
  if (table)
    for (int i = 0; i < 16; ++i) p.panel_table[i] = uint8_t(int(std::nearbyint(127.0f * cpu::kNF4[i])) + 128);
  // Symmetric codes (o = -8 s exactly) need no offsets: the kernel subtracts 8 * sum(x) in
  // integers, which saves their memory traffic and an FMA per segment.
  bool symmetric = true;
  for (int64_t i = 0; i < p.N * p.row_groups && symmetric && !table; ++i)
    symmetric = p.offsets[i] == -8.0f * p.scales[i];
  p.panel_zero_point = symmetric ? 8 : 0;
  if (!symmetric) p.panel_offsets.assign(p.panel_scales.size(), 0.0f);
  for (int64_t n = 0; n < p.N; ++n) {
    const int64_t pi = n / R, r = n % R;
    const uint8_t* row = p.codes + n * p.row_bytes;
    for (int64_t j = 0; j < p.row_bytes; ++j)
      for (int h = 0; h < 2; ++h) {
        const int64_t e = cpu::nibble_element(p.order, j, h);
        const int code = (row[j] >> (4 * h)) & 0xF;
        const int64_t t = e / 8, i = e % 8;
        p.panel_codes[size_t(((pi * p.panel_octets + t) * R + r) * 4 + i % 4)] |= uint8_t(code << (4 * (i / 4)));
      }
    for (int64_t g = 0; g < p.row_groups; ++g) {
      p.panel_scales[size_t((pi * p.row_groups + g) * R + r)] =
          table ? p.scales[n * p.row_groups + g] / 127.0f : p.scales[n * p.row_groups + g];
      if (!symmetric) p.panel_offsets[size_t((pi * p.row_groups + g) * R + r)] = p.offsets[n * p.row_groups + g];
    }
  }
}

// int8 codes in row panels (see qmatmul.h); only when every 4-element quad and every
// 32-element segment lies in one group.
bool int8_panels_fit(const PackedWeight& p) {
  return p.group == p.K || p.group % 32 == 0 || (32 % p.group == 0 && p.group % 4 == 0);
}

void pack_int8_panels(PackedWeight& p) {
  constexpr int64_t R = PackedWeight::kPanelRows;
  const int64_t panels = (p.N + R - 1) / R;
  const int64_t Kpad = (p.K + 31) / 32 * 32;
  p.panel_quads = Kpad / 4;
  p.panel_codes.assign(size_t(panels * p.panel_quads * R * 4), 0x80);  // 0x80: weight 0
  p.panel_scales.assign(size_t(panels * p.row_groups * R), 0.0f);
  for (int64_t n = 0; n < p.N; ++n) {
    const int64_t pi = n / R, r = n % R;
    const auto* row = reinterpret_cast<const int8_t*>(p.codes + n * p.K);
    for (int64_t k = 0; k < p.K; ++k)
      p.panel_codes[size_t(((pi * p.panel_quads + k / 4) * R + r) * 4 + k % 4)] = uint8_t(row[k] + 128);
    for (int64_t g = 0; g < p.row_groups; ++g)
      p.panel_scales[size_t((pi * p.row_groups + g) * R + r)] = p.scales[n * p.row_groups + g];
  }
}

void pack_ternary_panels(PackedWeight& p) {
  constexpr int64_t R = PackedWeight::kPanelRows;
  const int64_t panels = (p.N + R - 1) / R;
  const int64_t Kpad = (p.K + 31) / 32 * 32;
  p.panel_hexads = Kpad / 16;
  p.panel_codes.assign(size_t(panels * p.panel_hexads * R * 4), cpu::kTernaryPadByte);  // code 1: weight 0
  for (int64_t n = 0; n < p.N; ++n) {
    const int64_t pi = n / R, r = n % R;
    for (int64_t k = 0; k < p.K; ++k) {
      const int code = (p.codes[n * p.row_bytes + k / 4] >> (2 * (k % 4))) & 3;
      const int64_t i = k % 4, j = (k % 16) / 4;
      uint8_t& byte = p.panel_codes[size_t(((pi * p.panel_hexads + k / 16) * R + r) * 4 + i)];
      byte = uint8_t((byte & ~(3 << (2 * j))) | (code << (2 * j)));
    }
  }
}

}  // namespace

PackedWeight pack_weight(const QuantSpec& spec, ConstQuantStorage src, int64_t N, int64_t K) {
  const QuantLayout L = quant_layout(spec, K);
  if (N <= 0) throw std::invalid_argument("N (out_features) must be positive, got " + std::to_string(N));
  PackedWeight p;
  p.spec = spec;
  p.N = N;
  p.K = K;
  p.source = src;
  p.group = L.group_size ? L.group_size : K;
  switch (spec.format) {
    case QuantFormat::kInt4: {
      p.kind = PackedKind::kNibbleAffine;
      p.order = NibbleOrder::kLowFirst;
      p.row_bytes = L.data_bytes_per_row;
      p.row_groups = L.groups_per_row;
      p.codes = src.data;
      p.scales = src.scales;
      // w = s*(q - zp) = s*q + o with o = -zp*s.
      p.owned_offsets.resize(size_t(N * L.groups_per_row));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < L.groups_per_row; ++g) {
          const int zp =
              spec.symmetric ? 8 : (src.zero_points[n * L.zero_point_bytes_per_row + g / 2] >> ((g & 1) * 4)) & 0xF;
          p.owned_offsets[size_t(n * L.groups_per_row + g)] = -float(zp) * src.scales[n * L.groups_per_row + g];
        }
      break;
    }
    case QuantFormat::kNF4:
      p.kind = PackedKind::kNibbleTable;
      p.order = NibbleOrder::kHighFirst;
      p.row_bytes = L.data_bytes_per_row;
      p.row_groups = L.groups_per_row;
      p.codes = src.data;
      p.scales = src.scales;
      break;
    case QuantFormat::kInt8:
      p.kind = PackedKind::kInt8;
      p.row_bytes = K;
      p.row_groups = L.groups_per_row;
      p.codes = src.data;
      p.scales = src.scales;
      break;
    case QuantFormat::kTernary:
      p.kind = PackedKind::kTernary;
      p.row_bytes = L.data_bytes_per_row;
      p.row_groups = 0;
      p.codes = src.data;
      p.scales = src.scales;
      break;
    case QuantFormat::kQ4_0:
      p.kind = PackedKind::kNibbleAffine;
      p.order = NibbleOrder::kSplit32;
      p.group = 32;
      p.row_bytes = K / 2;
      p.row_groups = K / 32;
      pack_q4_0(p);
      break;
    case QuantFormat::kQ4_K:
      p.kind = PackedKind::kNibbleAffine;
      p.order = NibbleOrder::kSplit64;
      p.group = 32;
      p.row_bytes = K / 2;
      p.row_groups = K / 32;
      pack_q4_k(p);
      break;
    case QuantFormat::kQ8_0:
      p.kind = PackedKind::kInt8;
      p.group = 32;
      p.row_bytes = K;
      p.row_groups = K / 32;
      pack_q8_0(p);
      break;
    default:  // q6_k, tq2_0: dequantized row by row
      p.kind = PackedKind::kDequantize;
      p.row_bytes = L.data_bytes_per_row;
      break;
  }
  if (!p.owned_codes.empty()) p.codes = p.owned_codes.data();
  if (!p.owned_scales.empty()) p.scales = p.owned_scales.data();
  if (!p.owned_offsets.empty()) p.offsets = p.owned_offsets.data();
  if (p.kind == PackedKind::kNibbleAffine || p.kind == PackedKind::kNibbleTable) pack_panels(p);
  if (p.kind == PackedKind::kInt8 && int8_panels_fit(p)) pack_int8_panels(p);
  if (p.kind == PackedKind::kTernary) pack_ternary_panels(p);
  return p;
}

namespace {

// Many float activation rows (prefill, training): the register-decoding tiles decode each
// weight once per block of rows but then reduce along K row by row; past a few dozen rows
// a GEMM wins. Blocks of weight rows are dequantized (all threads) into a buffer of at most
// 4 MiB and multiplied with sgemm, so the float weight never exists whole.
void dequantize_gemm(const PackedWeight& w, const cpu::RowKernels& rows, const float* x, int64_t M, float* y) {
  const int64_t K = w.K, N = w.N;
  const QuantLayout L = quant_layout(w.spec, K);
  const cpu::RowParams p{L.group_size, w.spec.symmetric, 0.0f};
  const cpu::DequantizeRowFn dequantize = rows.dequantize[int(w.spec.format)];
  const int64_t block = std::min(N, std::max<int64_t>(16, (int64_t(1) << 20) / K));
  std::vector<float> wf(static_cast<size_t>(block * K));
  for (int64_t n0 = 0; n0 < N; n0 += block) {
    const int64_t nb = std::min(block, N - n0);
    parallel_for(nb, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) dequantize(cpu::source_row(w, L, n0 + r), K, p, &wf[size_t(r * K)]);
    });
    sgemm(false, true, M, nb, K, 1.0f, x, K, wf.data(), K, 0.0f, y + n0, N);
  }
}

}  // namespace

namespace {

// Float activations: from about this many rows dequantize_gemm beats the tiles (Zen 4, 2
// threads: 2.0x at M = 1024, even at M ~ 48 for 2048 x 2048 nf4, earlier for smaller K).
constexpr int64_t kDequantGemmMinRows = 48;

// The activations as the tile kernels read them: fp32, and for the int8 modes their codes
// and block scales over the padded K of the weights they meet.
struct PreparedActivations {
  std::vector<float> x32;
  const float* xf = nullptr;
  std::vector<uint8_t> bad_rows;  // rows holding NaN/Inf: their outputs become NaN
  std::vector<int8_t> xq;
  std::vector<float> xs, xhat;
};

// A multiple of 256 covering every code of a weight row.
int64_t padded_k(const PackedWeight& w) {
  const int64_t code_elements = w.kind == PackedKind::kTernary ? 4 * w.row_bytes
                                : w.kind == PackedKind::kInt8  ? w.row_bytes
                                                               : 2 * w.row_bytes;
  return (std::max(w.K, code_elements) + 255) / 256 * 256;
}

void prepare_activations(const void* x, DType x_dtype, int64_t M, int64_t K, int64_t Kp, QMatmulActivation act,
                         const cpu::RowKernels& rows, PreparedActivations& a) {
  // fp32 activations (converted once; the kernels read them many times).
  a.xf = static_cast<const float*>(x);
  if (x_dtype != DType::kF32) {
    a.x32.resize(size_t(M * K));
    parallel_for(M, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m)
        (x_dtype == DType::kF16 ? rows.f16_to_f32 : rows.bf16_to_f32)(static_cast<const uint16_t*>(x) + m * K, K,
                                                                      &a.x32[size_t(m * K)]);
    });
    a.xf = a.x32.data();
  }
  a.bad_rows = cpu::non_finite_rows(a.xf, M, K);
  if (act == QMatmulActivation::kFloat) return;
  // Symmetric int8 by the int8 format's row kernel: blocks of 32, or the whole row with
  // its scale repeated for every block, so the kernels see one layout either way.
  const bool per_row = act == QMatmulActivation::kInt8Row;
  const int64_t blocks = Kp / kActBlock;
  a.xq.assign(size_t(M * Kp), 0);
  a.xs.assign(size_t(M * blocks), 0.0f);
  a.xhat.assign(size_t(M * K), 0.0f);
  const cpu::RowParams params{per_row ? 0 : kActBlock, true, 0.0f};
  parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      if (!a.bad_rows.empty() && a.bad_rows[size_t(m)]) continue;  // stays zero; its y row is NaN
      int8_t* q = &a.xq[size_t(m * Kp)];
      float* sc = &a.xs[size_t(m * blocks)];
      rows.quantize[int(QuantFormat::kInt8)](a.xf + m * K, K, params, {reinterpret_cast<uint8_t*>(q), sc, nullptr});
      if (per_row) std::fill(sc + 1, sc + blocks, sc[0]);
      for (int64_t k = 0; k < K; ++k) a.xhat[size_t(m * K + k)] = float(q[k]) * sc[k / kActBlock];
    }
  });
}

cpu::TileArgs tile_args(const PackedWeight& w, int64_t M, const PreparedActivations& a, QMatmulActivation act,
                        float* y) {
  cpu::TileArgs args{&w, M, a.xf, nullptr, nullptr, padded_k(w), y};
  if (act != QMatmulActivation::kFloat) {
    args.x = a.xhat.data();
    args.xq = a.xq.data();
    args.xs = a.xs.data();
  }
  return args;
}

// Bias and NaN rows of y [m0, m1) x N (fp32).
void finish_rows(float* yf, int64_t m0, int64_t m1, int64_t N, const float* bias,
                 const std::vector<uint8_t>& bad_rows) {
  for (int64_t m = m0; m < m1; ++m) {
    float* row = yf + m * N;
    if (bias)
      for (int64_t n = 0; n < N; ++n) row[n] += bias[n];
    if (!bad_rows.empty() && bad_rows[size_t(m)]) std::fill(row, row + N, std::numeric_limits<float>::quiet_NaN());
  }
}

}  // namespace

void qmatmul(const PackedWeight& w, const void* x, DType x_dtype, int64_t M, const float* bias, void* y, DType y_dtype,
             QMatmulActivation act, CpuIsa isa, QMatmulBackend backend) {
  if (M < 0) throw std::invalid_argument("M must be >= 0");
  const CpuIsa resolved = resolve_cpu_isa(isa);
  const bool onednn_fits =
      act == QMatmulActivation::kInt8Row && w.kind == PackedKind::kInt8 && w.group == w.K && onednn::available();
  if (backend == QMatmulBackend::kOneDnn && !onednn_fits)
    throw std::invalid_argument(
        "backend 'onednn' needs activation 'int8_row', per-channel int8 weights (format 'int8' without group_size) "
        "and a build with oneDNN");
  // Measured on Zen 4, 2 threads (bench_qmatmul): oneDNN's int8 GEMM wins from M ~ 64
  // (1.4-1.6x our panels at M = 128); below that our panel kernels are 2-4x faster.
  constexpr int64_t kOneDnnMinRows = 64;
  const bool use_onednn =
      onednn_fits && (backend == QMatmulBackend::kOneDnn ||
                      (backend == QMatmulBackend::kAuto && resolved != CpuIsa::kRef && M >= kOneDnnMinRows));
  if (M == 0) return;
  const cpu::QMatmulKernels& kernels = kernels_for(resolved);
  const cpu::RowKernels& rows = cpu::row_kernels_for(resolved);
  const int64_t K = w.K, N = w.N;

  PreparedActivations a;
  prepare_activations(x, x_dtype, M, K, padded_k(w), act, rows, a);

  std::vector<float> y32;
  float* yf = static_cast<float*>(y);
  if (y_dtype != DType::kF32) {
    y32.resize(size_t(M * N));
    yf = y32.data();
  }
  const cpu::TileArgs args = tile_args(w, M, a, act, yf);
  if (use_onednn) {
    // Exact int32 products from oneDNN, then y = acc * sx[m] * sw[n].
    std::vector<int32_t> acc(size_t(M * N));
    onednn::matmul_s8s8s32(a.xq.data(), M, K, args.Kp, reinterpret_cast<const int8_t*>(w.codes), N, acc.data());
    const int64_t blocks = args.Kp / kActBlock;
    parallel_for(M, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m)
        for (int64_t n = 0; n < N; ++n)
          yf[m * N + n] = float(acc[size_t(m * N + n)]) * (a.xs[size_t(m * blocks)] * w.scales[n]);
    });
  } else if (act == QMatmulActivation::kFloat && M >= kDequantGemmMinRows && resolved != CpuIsa::kRef) {
    dequantize_gemm(w, rows, a.xf, M, yf);
  } else {
    // Split output columns in whole panels, so panel kernels never share a panel.
    constexpr int64_t R = PackedWeight::kPanelRows;
    const cpu::TileFn tile = act == QMatmulActivation::kFloat ? kernels.float_act : kernels.int8_act;
    parallel_for((N + R - 1) / R, [&](int64_t p0, int64_t p1) { tile(args, p0 * R, std::min(N, p1 * R)); });
  }

  parallel_for(M, [&](int64_t m0, int64_t m1) {
    finish_rows(yf, m0, m1, N, bias, a.bad_rows);
    if (y_dtype != DType::kF32)
      for (int64_t m = m0; m < m1; ++m)
        (y_dtype == DType::kF16 ? rows.f32_to_f16 : rows.f32_to_bf16)(yf + m * N, N, static_cast<uint16_t*>(y) + m * N);
  });
}

void qmatmul_group(const std::vector<QMatmulTarget>& targets, const float* x, int64_t M, QMatmulActivation act,
                   CpuIsa isa) {
  if (targets.empty() || M <= 0) return;
  const PackedWeight& first = *targets[0].w;
  for (const QMatmulTarget& t : targets)
    if (t.w->K != first.K || padded_k(*t.w) != padded_k(first))
      throw std::invalid_argument("qmatmul_group: every weight must have the same in_features and layout");
  const CpuIsa resolved = resolve_cpu_isa(isa);
  if ((act == QMatmulActivation::kFloat && M >= kDequantGemmMinRows && resolved != CpuIsa::kRef) ||
      act == QMatmulActivation::kInt8Row) {
    // The GEMM paths (dequantize then sgemm, oneDNN int8) run weight by weight.
    for (const QMatmulTarget& t : targets) qmatmul(*t.w, x, DType::kF32, M, t.bias, t.y, DType::kF32, act, isa);
    return;
  }
  const cpu::QMatmulKernels& kernels = kernels_for(resolved);
  PreparedActivations a;
  prepare_activations(x, DType::kF32, M, first.K, padded_k(first), act, cpu::row_kernels_for(resolved), a);
  // Every weight's panels in one parallel region: panel p of the concatenation belongs to
  // the weight whose range holds it.
  constexpr int64_t R = PackedWeight::kPanelRows;
  std::vector<cpu::TileArgs> args;
  std::vector<int64_t> first_panel{0};
  for (const QMatmulTarget& t : targets) {
    args.push_back(tile_args(*t.w, M, a, act, t.y));
    first_panel.push_back(first_panel.back() + (t.w->N + R - 1) / R);
  }
  const cpu::TileFn tile = act == QMatmulActivation::kFloat ? kernels.float_act : kernels.int8_act;
  parallel_for(first_panel.back(), [&](int64_t p0, int64_t p1) {
    for (size_t i = 0; i < targets.size(); ++i) {
      const int64_t lo = std::max(p0, first_panel[i]), hi = std::min(p1, first_panel[i + 1]);
      if (lo >= hi) continue;
      const int64_t N = targets[i].w->N;
      tile(args[i], (lo - first_panel[i]) * R, std::min(N, (hi - first_panel[i]) * R));
    }
  });
  for (const QMatmulTarget& t : targets) finish_rows(t.y, 0, M, t.w->N, t.bias, a.bad_rows);
}

double measure_read_bandwidth(int64_t bytes, int repeats, CpuIsa isa) {
  if (bytes < (1 << 20) || repeats < 1) throw std::invalid_argument("need bytes >= 1 MiB and repeats >= 1");
  const cpu::QMatmulKernels& k = kernels_for(isa);
  const int64_t n = bytes / 4;
  constexpr int64_t kChunk = 1 << 18;  // 1 MiB of floats per work item
  std::vector<float> buf(static_cast<size_t>(n));
  parallel_for(n, [&](int64_t i0, int64_t i1) {  // first touch by the threads that read it
    for (int64_t i = i0; i < i1; ++i) buf[size_t(i)] = 1.0f;
  });
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<float> partial(static_cast<size_t>(chunks));
  double best = 0.0;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(chunks, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        partial[size_t(c)] = k.sum_f32(buf.data() + c * kChunk, std::min(kChunk, n - c * kChunk));
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(n) * 4.0 / s / 1e9);
  }
  return best;
}

}  // namespace slmops
