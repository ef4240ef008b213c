// CUDA dequantization against the CPU ref kernels, bit for bit, for every format and
// output dtype. Runs only where a GPU is visible; elsewhere the GPU tests skip and only
// the driver-free behaviour (device_count, argument checks) is tested.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant_cases.h"
#include "slmops/cuda.h"
#include "slmops/kd_loss.h"
#include "slmops/quant.h"

// SLMOPS_TESTS_HAVE_CUDA comes from tests/cpp/CMakeLists.txt in CUDA builds, where the
// test binary links cudart; a CPU-only build must not pick up a stray cuda_runtime.h.
#if defined(SLMOPS_TESTS_HAVE_CUDA) && __has_include(<cuda_runtime.h>)
#include <cuda_runtime.h>
#define SLMOPS_CUDA_TESTS 1
#else
#define SLMOPS_CUDA_TESTS 0
#endif

using namespace slmops;
using namespace slmops::test_cases;

namespace {

bool gpu_visible() { return cuda::compiled() && cuda::device_count() > 0; }

}  // namespace

TEST(CudaInfoTest, DeviceCountNeverThrows) {
  int n = -1;
  EXPECT_NO_THROW(n = cuda::device_count());
  EXPECT_GE(n, 0);
  if (!cuda::compiled()) {
    EXPECT_EQ(n, 0);
    EXPECT_EQ(cuda::architectures(), "");
  } else {
    EXPECT_FALSE(cuda::architectures().empty());
  }
}

TEST(CudaInfoTest, DeviceCountIsZeroWithNoGpuVisible) {
  // In a fresh process with every GPU hidden, device_count() must report 0, not throw.
  const std::string style = GTEST_FLAG_GET(death_test_style);
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // re-exec: CUDA not yet initialized
  EXPECT_EXIT(
      {
        setenv("CUDA_VISIBLE_DEVICES", "-1", 1);
        int n = -1;
        try {
          n = cuda::device_count();
        } catch (...) {
          std::_Exit(2);
        }
        std::_Exit(n == 0 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
  GTEST_FLAG_SET(death_test_style, style);
}

TEST(CudaInfoTest, DequantizeChecksArgumentsBeforeTouchingTheGpu) {
  if (!cuda::compiled()) {
    EXPECT_THROW(cuda::dequantize({QuantFormat::kInt8, 0, true}, {}, 1, 8, nullptr, DType::kF32, nullptr),
                 std::runtime_error);
    return;
  }
  // K not a multiple of the GGUF block, and a negative row count: invalid_argument.
  EXPECT_THROW(cuda::dequantize({QuantFormat::kQ4_K, 0, true}, {}, 1, 100, nullptr, DType::kF32, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::dequantize({QuantFormat::kInt8, 0, true}, {}, -1, 8, nullptr, DType::kF32, nullptr),
               std::invalid_argument);
  // rows == 0 is a no-op, with or without a GPU.
  EXPECT_NO_THROW(cuda::dequantize({QuantFormat::kInt8, 0, true}, {}, 0, 8, nullptr, DType::kF32, nullptr));
  if (cuda::device_count() == 0) {
    // A real launch without a GPU reports the CUDA error as runtime_error, not a crash.
    uint8_t data[8] = {};
    float scale = 1.0f, out[8];
    EXPECT_THROW(
        cuda::dequantize({QuantFormat::kInt8, 0, true}, {data, &scale, nullptr}, 1, 8, out, DType::kF32, nullptr),
        std::runtime_error);
    EXPECT_EQ(cuda::device_count(), 0);
  }
}

class CudaDequantTest : public ::testing::TestWithParam<Case> {};

#if SLMOPS_CUDA_TESTS
namespace {

#define CUDA_CHECK(expr)                                                       \
  do {                                                                         \
    const cudaError_t err_ = (expr);                                           \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_); \
  } while (0)

// Owns one device buffer; frees it on scope exit so a failed ASSERT does not leak.
struct DeviceBuffer {
  void* p = nullptr;
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
};

template <typename T>
void to_device(DeviceBuffer& d, const std::vector<T>& h) {
  const size_t bytes = std::max<size_t>(h.size() * sizeof(T), 1);
  CUDA_CHECK(cudaMalloc(&d.p, bytes));
  if (!h.empty()) CUDA_CHECK(cudaMemcpy(d.p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}

void check_case(const Case& c, int64_t rows, int64_t K) {
  const QuantSpec spec{c.format, c.group_size, c.symmetric};
  const QuantLayout L = quant_layout(spec, K);
  const auto w = make_weights(rows, K, unsigned(K * 31 + rows));
  std::vector<uint8_t> data(size_t(rows * L.data_bytes_per_row));
  std::vector<float> scales(L.tensor_scale ? 1 : size_t(rows * L.scales_per_row));
  std::vector<uint8_t> zps(size_t(rows * L.zero_point_bytes_per_row));
  quantize(spec, w.data(), DType::kF32, rows, K, {data.data(), scales.data(), zps.data()}, CpuIsa::kRef);

  DeviceBuffer d_data, d_scales, d_zps, d_out;
  to_device(d_data, data);
  to_device(d_scales, scales);
  to_device(d_zps, zps);
  CUDA_CHECK(cudaMalloc(&d_out.p, size_t(rows * K) * 4));
  if (::testing::Test::HasFatalFailure()) return;
  const ConstQuantStorage d_src{static_cast<const uint8_t*>(d_data.p), static_cast<const float*>(d_scales.p),
                                static_cast<const uint8_t*>(d_zps.p)};

  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(std::string(dtype_name(dt)) + " rows=" + std::to_string(rows) + " K=" + std::to_string(K));
    const size_t bytes = size_t(rows * K) * size_t(dtype_size(dt));
    std::vector<uint8_t> want(bytes, 0xCD), got(bytes, 0xEF);
    dequantize(spec, {data.data(), scales.data(), zps.data()}, rows, K, want.data(), dt, CpuIsa::kRef);
    CUDA_CHECK(cudaMemset(d_out.p, 0xEF, bytes));  // poison: every element must be written
    ASSERT_NO_THROW(cuda::dequantize(spec, d_src, rows, K, d_out.p, dt, nullptr));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(got.data(), d_out.p, bytes, cudaMemcpyDeviceToHost));
    if (want != got) {
      size_t e = 0;
      while (want[e] == got[e]) ++e;
      const size_t el = e / size_t(dtype_size(dt));
      FAIL() << "first differing element " << el << " (row " << el / size_t(K) << ", col " << el % size_t(K) << ")";
    }
  }
}

}  // namespace

TEST_P(CudaDequantTest, MatchesCpuRefBitForBit) {
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA GPU visible";
  const Case c = GetParam();
  for (int64_t K : k_values(c))
    for (int64_t rows : {1, 5}) {
      check_case(c, rows, K);
      if (HasFatalFailure()) return;
    }
}

TEST(CudaDequantStreamTest, RunsOnAGivenStream) {
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA GPU visible";
  const int64_t rows = 3, K = 256;
  const QuantSpec spec{QuantFormat::kQ4_K, 0, true};
  const QuantLayout L = quant_layout(spec, K);
  const auto w = make_weights(rows, K, 11);
  std::vector<uint8_t> data(size_t(rows * L.data_bytes_per_row));
  quantize(spec, w.data(), DType::kF32, rows, K, {data.data(), nullptr, nullptr}, CpuIsa::kRef);
  std::vector<float> want(size_t(rows * K)), got(want.size(), NAN);
  dequantize(spec, {data.data(), nullptr, nullptr}, rows, K, want.data(), DType::kF32, CpuIsa::kRef);

  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  DeviceBuffer d_data, d_out;
  to_device(d_data, data);
  CUDA_CHECK(cudaMalloc(&d_out.p, want.size() * 4));
  EXPECT_NO_THROW(cuda::dequantize(spec, {static_cast<const uint8_t*>(d_data.p), nullptr, nullptr}, rows, K, d_out.p,
                                   DType::kF32, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CUDA_CHECK(cudaMemcpy(got.data(), d_out.p, want.size() * 4, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaStreamDestroy(stream));
  EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * 4), 0);
}

// y = x @ W^T through every GPU path against the CPU ref dequantization in double.
TEST(CudaQMatmulTest, EveryPathMatchesTheDequantizedProduct) {
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA GPU visible";
  const int64_t N = 70, K = 320;
  for (const Case& c : {Case{QuantFormat::kInt4, 32, false}, Case{QuantFormat::kNF4, 64, true},
                        Case{QuantFormat::kInt8, 0, true}, Case{QuantFormat::kQ4_K, 0, true}}) {
    const QuantSpec spec{c.format, c.group_size, c.symmetric};
    const QuantLayout L = quant_layout(spec, K);
    const auto w = make_weights(N, K, 3);
    std::vector<uint8_t> data(size_t(N * L.data_bytes_per_row)), zps(size_t(N * L.zero_point_bytes_per_row));
    std::vector<float> scales(size_t(N * L.scales_per_row) + 1), dense(size_t(N * K));
    quantize(spec, w.data(), DType::kF32, N, K, {data.data(), scales.data(), zps.data()}, CpuIsa::kRef);
    dequantize(spec, {data.data(), scales.data(), zps.data()}, N, K, dense.data(), DType::kF32, CpuIsa::kRef);
    DeviceBuffer d_data, d_scales, d_zps, d_x, d_y;
    to_device(d_data, data);
    to_device(d_scales, scales);
    to_device(d_zps, zps);
    for (int64_t M : {1, 5, 40}) {
      std::vector<float> x(size_t(M * K));
      std::mt19937 rng{unsigned(M)};
      std::normal_distribution<float> nd;
      for (auto& v : x) v = nd(rng);
      DeviceBuffer dx, dy;
      to_device(dx, x);
      CUDA_CHECK(cudaMalloc(&dy.p, size_t(M * N) * 4));
      for (auto path :
           {cuda::CudaQMatmulPath::kAuto, cuda::CudaQMatmulPath::kGemv, cuda::CudaQMatmulPath::kDequantizeGemm}) {
        const bool fused = c.format != QuantFormat::kQ4_K;
        if (path == cuda::CudaQMatmulPath::kGemv && (!fused || M > cuda::kCudaGemvMaxRows)) continue;
        SCOPED_TRACE(case_name(c) + " M=" + std::to_string(M) + " path " + std::to_string(int(path)));
        ASSERT_NO_THROW(cuda::qmatmul(spec,
                                      {static_cast<const uint8_t*>(d_data.p), static_cast<const float*>(d_scales.p),
                                       static_cast<const uint8_t*>(d_zps.p)},
                                      N, K, dx.p, DType::kF32, M, nullptr, dy.p, QMatmulActivation::kFloat, path,
                                      nullptr));
        std::vector<float> y(size_t(M * N));
        CUDA_CHECK(cudaMemcpy(y.data(), dy.p, y.size() * 4, cudaMemcpyDeviceToHost));
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            double want = 0.0, mag = 0.0;
            for (int64_t k = 0; k < K; ++k) {
              want += double(x[size_t(m * K + k)]) * dense[size_t(n * K + k)];
              mag += std::fabs(double(x[size_t(m * K + k)]) * dense[size_t(n * K + k)]);
            }
            ASSERT_NEAR(y[size_t(m * N + n)], want, 1e-5 * mag + 1e-6) << "m " << m << " n " << n;
          }
      }
    }
  }
}

// The distillation kernel against the double reference (fp32 logits).
TEST(CudaKdTest, MatchesTheDoubleReference) {
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA GPU visible";
  const int64_t rows = 9, vocab = 3000, tv = 2990;
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> z(size_t(rows * vocab)), t(size_t(rows * tv));
  for (auto& v : z) v = nd(rng);
  for (auto& v : t) v = nd(rng);
  std::vector<int64_t> labels(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) labels[size_t(r)] = (r * 331) % tv;
  labels[2] = -100;
  DeviceBuffer dz, dt, dl, dloss, dgrad;
  to_device(dz, z);
  to_device(dt, t);
  to_device(dl, labels);
  CUDA_CHECK(cudaMalloc(&dloss.p, size_t(rows) * 4));
  CUDA_CHECK(cudaMalloc(&dgrad.p, z.size() * 4));
  for (Divergence d : {Divergence::kForwardKl, Divergence::kReverseKl, Divergence::kJsd}) {
    KdOptions o;
    o.divergence = d;
    o.temperature = 1.5f;
    o.hard_weight = 0.2f;
    KdTeacher kt;
    kt.logits = t.data();
    kt.vocab = tv;
    std::vector<float> want_loss(static_cast<size_t>(rows)), want_grad(z.size()), loss(static_cast<size_t>(rows)),
        grad(z.size());
    ref::kd_loss_fwd_bwd(o, z.data(), rows, vocab, kt, labels.data(), 0.25f, want_loss.data(), want_grad.data());
    cuda::CudaKdTeacher ct;
    ct.logits = dt.p;
    ct.vocab = tv;
    ASSERT_NO_THROW(cuda::kd_loss_fwd_bwd(o, dz.p, DType::kF32, rows, vocab, ct, static_cast<const int64_t*>(dl.p),
                                          0.25f, static_cast<float*>(dloss.p), dgrad.p, nullptr));
    CUDA_CHECK(cudaMemcpy(loss.data(), dloss.p, loss.size() * 4, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(grad.data(), dgrad.p, grad.size() * 4, cudaMemcpyDeviceToHost));
    for (int64_t r = 0; r < rows; ++r)
      EXPECT_NEAR(loss[size_t(r)], want_loss[size_t(r)], 1e-4 * (1 + std::fabs(want_loss[size_t(r)])));
    for (size_t i = 0; i < grad.size(); ++i) ASSERT_NEAR(grad[i], want_grad[i], 2e-6) << "element " << i;
  }
}

#else  // no CUDA runtime in this build: the GPU tests exist and say why they skip

TEST_P(CudaDequantTest, MatchesCpuRefBitForBit) {
  EXPECT_FALSE(gpu_visible());
  GTEST_SKIP() << "no CUDA GPU visible (built without CUDA)";
}

#endif

INSTANTIATE_TEST_SUITE_P(AllFormats, CudaDequantTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) { return case_name(info.param); });
