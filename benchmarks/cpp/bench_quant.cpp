// Quantize and dequantize throughput of every weight format on every CPU kernel set that
// can run here, plus the machine's read and copy bandwidth over the same fp32 weight,
// measured in the same run (the ceiling for these memory-bound kernels).
//
// Benchmarks are named <op>/<format>/<isa>/<rows>x<K>, e.g. quantize/q4_0/avx512/4096x4096,
// and bandwidth/{read,copy}/<rows>x<K>. bytes_per_second counts the fp32 weight once
// (rows * K * 4 bytes) for every op, so it compares directly across formats and ops.
//
// Extra flags (everything else goes to Google Benchmark, e.g. --benchmark_filter=q4_k):
//   --threads=N            slmops::set_num_threads(N) (default: OMP_NUM_THREADS / all cores)
//   --shapes=RxK[,RxK...]  weight shapes (default 4096x4096,896x4864)
// Without --benchmark_min_time the run uses 0.1 s per benchmark, about a minute in all
// on two cores.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "slmops/cpu_features.h"
#include "slmops/quant.h"
#include "slmops/threading.h"

namespace {

using slmops::CpuIsa;
using slmops::QuantFormat;
using slmops::QuantSpec;

struct FormatCase {
  const char* label;
  QuantSpec spec;
};

// group_size 0 = the format's default (int8: one scale per row; nf4: 64).
const FormatCase kFormats[] = {
    {"int8", {QuantFormat::kInt8, 0, true}},
    {"int4_g32_sym", {QuantFormat::kInt4, 32, true}},
    {"int4_g128_asym", {QuantFormat::kInt4, 128, false}},
    {"nf4", {QuantFormat::kNF4, 0, true}},
    {"ternary", {QuantFormat::kTernary, 0, true}},
    {"q4_0", {QuantFormat::kQ4_0, 0, true}},
    {"q8_0", {QuantFormat::kQ8_0, 0, true}},
    {"q4_k", {QuantFormat::kQ4_K, 0, true}},
    {"q6_k", {QuantFormat::kQ6_K, 0, true}},
    {"tq2_0", {QuantFormat::kTQ2_0, 0, true}},
};

struct Shape {
  int64_t rows, K;
  std::string name() const { return std::to_string(rows) + "x" + std::to_string(K); }
  int64_t fp32_bytes() const { return rows * K * int64_t(sizeof(float)); }
};

// The buffers of one quantized weight, sized by quant_layout.
struct QuantBuffers {
  std::vector<uint8_t> data;
  std::vector<float> scales;
  std::vector<uint8_t> zero_points;

  QuantBuffers(const QuantSpec& spec, const Shape& s) {
    const slmops::QuantLayout L = slmops::quant_layout(spec, s.K);
    data.resize(size_t(s.rows * L.data_bytes_per_row));
    scales.resize(L.tensor_scale ? 1 : size_t(s.rows * L.scales_per_row));
    zero_points.resize(size_t(s.rows * L.zero_point_bytes_per_row));
  }
  slmops::QuantStorage storage() { return {data.data(), scales.data(), zero_points.data()}; }
  slmops::ConstQuantStorage const_storage() const { return {data.data(), scales.data(), zero_points.data()}; }
  size_t nbytes() const { return data.size() + scales.size() * sizeof(float) + zero_points.size(); }
};

// Inputs are made on first use, so benchmarks removed by --benchmark_filter cost nothing.
// Weights: N(0, 0.02), like an initialized linear layer, from a fixed seed.
const std::vector<float>& weight(const Shape& s) {
  static std::map<std::pair<int64_t, int64_t>, std::vector<float>> cache;
  auto& w = cache[{s.rows, s.K}];
  if (w.empty()) {
    std::mt19937 gen(1234);
    std::normal_distribution<float> dist(0.0f, 0.02f);
    w.resize(size_t(s.rows * s.K));
    for (float& v : w) v = dist(gen);
  }
  return w;
}

// The weight quantized once with the default kernel set; every set reads the same bytes.
const QuantBuffers& quantized(const FormatCase& f, const Shape& s) {
  static std::map<std::tuple<std::string, int64_t, int64_t>, std::unique_ptr<QuantBuffers>> cache;
  auto& q = cache[{f.label, s.rows, s.K}];
  if (!q) {
    q = std::make_unique<QuantBuffers>(f.spec, s);
    slmops::quantize(f.spec, weight(s).data(), slmops::DType::kF32, s.rows, s.K, q->storage());
  }
  return *q;
}

void set_counters(benchmark::State& state, const Shape& s, CpuIsa isa, double bits_per_weight) {
  state.SetBytesProcessed(int64_t(state.iterations()) * s.fp32_bytes());
  state.counters["isa"] = double(static_cast<int>(isa));  // 0 ref, 1 avx2, 2 avx512
  state.counters["threads"] = double(slmops::get_num_threads());
  if (bits_per_weight > 0) state.counters["bpw"] = bits_per_weight;
}

void BM_Quantize(benchmark::State& state, FormatCase f, CpuIsa isa, Shape s) {
  const std::vector<float>& w = weight(s);
  QuantBuffers out(f.spec, s);
  // One untimed call: faults in the output pages and warms the caches and thread pool.
  slmops::quantize(f.spec, w.data(), slmops::DType::kF32, s.rows, s.K, out.storage(), isa);
  for (auto _ : state) {
    slmops::quantize(f.spec, w.data(), slmops::DType::kF32, s.rows, s.K, out.storage(), isa);
    benchmark::ClobberMemory();
  }
  set_counters(state, s, isa, 8.0 * double(out.nbytes()) / double(s.rows * s.K));
  state.SetLabel(slmops::cpu_isa_name(isa));
}

void BM_Dequantize(benchmark::State& state, FormatCase f, CpuIsa isa, Shape s) {
  const QuantBuffers& q = quantized(f, s);
  std::vector<float> out(size_t(s.rows * s.K));
  slmops::dequantize(f.spec, q.const_storage(), s.rows, s.K, out.data(), slmops::DType::kF32, isa);
  for (auto _ : state) {
    slmops::dequantize(f.spec, q.const_storage(), s.rows, s.K, out.data(), slmops::DType::kF32, isa);
    benchmark::ClobberMemory();
  }
  set_counters(state, s, isa, 8.0 * double(q.nbytes()) / double(s.rows * s.K));
  state.SetLabel(slmops::cpu_isa_name(isa));
}

// Read bandwidth: a row-parallel sum over the weight, split over threads like the kernels.
void BM_Read(benchmark::State& state, Shape s) {
  const std::vector<float>& w = weight(s);
  std::vector<float> row_sums(size_t(s.rows));
  auto body = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = w.data() + r * s.K;
      float acc[16] = {};
      int64_t i = 0;
      for (; i + 16 <= s.K; i += 16)
        for (int j = 0; j < 16; ++j) acc[j] += x[i + j];
      for (; i < s.K; ++i) acc[0] += x[i];
      float t = 0.0f;
      for (float a : acc) t += a;
      row_sums[size_t(r)] = t;
    }
  };
  slmops::parallel_for(s.rows, body);
  for (auto _ : state) {
    slmops::parallel_for(s.rows, body);
    benchmark::DoNotOptimize(row_sums.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s, slmops::active_cpu_isa(), 0.0);
  state.SetLabel("sum of the fp32 weight");
}

// Copy bandwidth: the fp32 weight into another fp32 buffer, one row per memcpy. Row-sized
// copies use ordinary (cached) stores, as the dequantize kernels do; one big memcpy would
// switch to non-temporal stores and understate what a cache-resident output allows.
void BM_Copy(benchmark::State& state, Shape s) {
  const std::vector<float>& w = weight(s);
  std::vector<float> out(w.size());
  auto body = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      std::memcpy(out.data() + r * s.K, w.data() + r * s.K, size_t(s.K) * sizeof(float));
  };
  slmops::parallel_for(s.rows, body);
  for (auto _ : state) {
    slmops::parallel_for(s.rows, body);
    benchmark::ClobberMemory();
  }
  set_counters(state, s, slmops::active_cpu_isa(), 0.0);
  state.SetLabel("row-wise memcpy of the fp32 weight");
}

std::vector<Shape> parse_shapes(const std::string& text) {
  std::vector<Shape> shapes;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string item = text.substr(pos, comma - pos);
    const size_t x = item.find('x');
    if (x == std::string::npos) throw std::invalid_argument("--shapes wants RxK[,RxK...], got '" + text + "'");
    const Shape s{std::stoll(item.substr(0, x)), std::stoll(item.substr(x + 1))};
    if (s.rows <= 0 || s.K <= 0) throw std::invalid_argument("--shapes: dimensions must be > 0, got " + item);
    shapes.push_back(s);
    pos = comma + 1;
  }
  return shapes;
}

void register_benchmarks(const std::vector<Shape>& shapes) {
  const std::vector<CpuIsa> isas = slmops::available_cpu_isas();
  for (const Shape& s : shapes) {
    benchmark::RegisterBenchmark(("bandwidth/read/" + s.name()).c_str(), BM_Read, s)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("bandwidth/copy/" + s.name()).c_str(), BM_Copy, s)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    for (const FormatCase& f : kFormats) {
      try {
        slmops::quant_layout(f.spec, s.K);
      } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "skipping %s at %s: %s\n", f.label, s.name().c_str(), e.what());
        continue;
      }
      for (const char* op : {"quantize", "dequantize"}) {
        for (CpuIsa isa : isas) {
          const std::string name = std::string(op) + "/" + f.label + "/" + slmops::cpu_isa_name(isa) + "/" + s.name();
          auto* b = op[0] == 'q' ? benchmark::RegisterBenchmark(name.c_str(), BM_Quantize, f, isa, s)
                                 : benchmark::RegisterBenchmark(name.c_str(), BM_Dequantize, f, isa, s);
          b->UseRealTime()->Unit(benchmark::kMillisecond);
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Shape> shapes = {{4096, 4096}, {896, 4864}};
  std::vector<char*> args;
  bool has_min_time = false;
  try {
    for (int i = 0; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("--threads=", 0) == 0) {
        slmops::set_num_threads(std::stoi(a.substr(10)));
      } else if (a.rfind("--shapes=", 0) == 0) {
        shapes = parse_shapes(a.substr(9));
      } else {
        has_min_time = has_min_time || a.rfind("--benchmark_min_time", 0) == 0;
        args.push_back(argv[i]);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "slmops_bench_quant: %s\n", e.what());
    return 2;
  }
  char default_min_time[] = "--benchmark_min_time=0.1";
  if (!has_min_time) args.push_back(default_min_time);
  int n = int(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;

  benchmark::AddCustomContext("slmops_cpu_isa", slmops::cpu_isa_name(slmops::active_cpu_isa()));
  benchmark::AddCustomContext("slmops_threads", std::to_string(slmops::get_num_threads()));
  benchmark::AddCustomContext("slmops_openmp", slmops::openmp_enabled() ? "yes" : "no");
  register_benchmarks(shapes);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
