// Device properties, stream-ordered scratch, and GEMMs on cuBLASLt.
//
// cuBLASLt is opened with dlopen on first use instead of being linked: the module then
// imports on machines without it (CPU users, a GPU box without the CUDA libraries), and
// a GPU user gets it from the toolkit or from PyPI's nvidia-cublas wheel (the Python
// layer preloads that wheel's copy, see slmops/_cuda_libs.py). Only the header is
// needed at build time; without it the build leaves the GEMMs out and says so here.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda/device.cuh"
#include "cuda/runtime.h"

#if defined(SLMOPS_HAVE_CUBLASLT)
#include <cublasLt.h>
#endif

namespace slmops::cuda {

DeviceInfo current_device() {
  DeviceInfo d;
  check(cudaGetDevice(&d.id), "cudaGetDevice");
  int major = 0, minor = 0;
  check(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, d.id), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d.id), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, d.id), "cudaDeviceGetAttribute");
  d.compute_capability = 10 * major + minor;
  return d;
}

StreamBuffer::StreamBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
  if (bytes) check(cudaMallocAsync(&p_, bytes, stream), "cudaMallocAsync (scratch)");
}
StreamBuffer::~StreamBuffer() {
  if (p_) cudaFreeAsync(p_, stream_);
}

#if defined(SLMOPS_HAVE_CUBLASLT)
namespace {

// clang-format off: a list, which clang-format would indent as one long expression
#define SLMOPS_LT_FUNCTIONS(X)                                                                            \
  X(cublasLtCreate) X(cublasLtMatmulDescCreate) X(cublasLtMatmulDescDestroy) X(cublasLtMatmulDescSetAttribute) \
  X(cublasLtMatrixLayoutCreate) X(cublasLtMatrixLayoutDestroy) X(cublasLtMatmulPreferenceCreate)                \
  X(cublasLtMatmulPreferenceDestroy) X(cublasLtMatmulPreferenceSetAttribute) X(cublasLtMatmulAlgoGetHeuristic)  \
  X(cublasLtMatmul) X(cublasLtGetStatusString)
// clang-format on

struct LtApi {
#define SLMOPS_LT_MEMBER(f) decltype(&::f) f = nullptr;
  SLMOPS_LT_FUNCTIONS(SLMOPS_LT_MEMBER)
#undef SLMOPS_LT_MEMBER
  std::string error;  // empty when loaded
};

#define SLMOPS_STR2(x) #x
#define SLMOPS_STR(x) SLMOPS_STR2(x)
constexpr const char* kLtLibrary = "libcublasLt.so." SLMOPS_STR(CUBLAS_VER_MAJOR);

LtApi load_lt() {
  LtApi api;
  void* lib = dlopen(kLtLibrary, RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
    api.error = std::string("cuBLASLt (") + kLtLibrary + ") could not be opened: " + dlerror() +
                ". Install it with `pip install slmops[cuda]` (nvidia-cublas) or put the CUDA toolkit's lib64 on "
                "LD_LIBRARY_PATH";
    return api;
  }
#define SLMOPS_LT_LOAD(f)                                                              \
  api.f = reinterpret_cast<decltype(&::f)>(dlsym(lib, #f));                            \
  if (!api.f) {                                                                        \
    api.error = std::string(kLtLibrary) + " has no symbol " #f " (too old a version)"; \
    return api;                                                                        \
  }
  SLMOPS_LT_FUNCTIONS(SLMOPS_LT_LOAD)
#undef SLMOPS_LT_LOAD
  return api;
}

const LtApi& lt_loaded() {
  static const LtApi api = load_lt();
  return api;
}

const LtApi& lt() {
  const LtApi& api = lt_loaded();
  if (!api.error.empty()) throw std::runtime_error(api.error);
  return api;
}

void lt_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLASLt ") + what + " failed: " + lt().cublasLtGetStatusString(s));
}

// One handle per device, made on first use and kept for the life of the process.
cublasLtHandle_t handle_for(int device) {
  constexpr int kMaxDevices = 64;
  static std::mutex mu;
  static cublasLtHandle_t handles[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) throw std::runtime_error("device id out of range");
  std::lock_guard<std::mutex> lock(mu);
  if (!handles[device]) lt_check(lt().cublasLtCreate(&handles[device]), "create");
  return handles[device];
}

cudaDataType_t data_type(GemmType t) {
  switch (t) {
    case GemmType::kF32: return CUDA_R_32F;
    case GemmType::kF16: return CUDA_R_16F;
    case GemmType::kBF16: return CUDA_R_16BF;
    case GemmType::kI8: return CUDA_R_8I;
    case GemmType::kI32: return CUDA_R_32I;
  }
  throw std::invalid_argument("gemm: unknown element type");
}

// RAII for the descriptor objects of one call.
struct LtCall {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtCall() {
    const LtApi& api = lt();
    if (pref) api.cublasLtMatmulPreferenceDestroy(pref);
    for (auto* l : {a, b, c})
      if (l) api.cublasLtMatrixLayoutDestroy(l);
    if (desc) api.cublasLtMatmulDescDestroy(desc);
  }
};

constexpr size_t kLtWorkspace = size_t(32) << 20;  // what cuBLAS asks for on Hopper

}  // namespace

bool cublaslt_available(const char** why) {
  const LtApi& api = lt_loaded();
  if (why) *why = api.error.c_str();
  return api.error.empty();
}

void gemm(int64_t M, int64_t N, int64_t K, GemmOperand A, GemmOperand B, void* C, GemmType c_type, int64_t ldc,
          float alpha, float beta, cudaStream_t stream) {
  if (M <= 0 || N <= 0 || K <= 0) throw std::invalid_argument("gemm: M, N and K must be positive");
  const LtApi& api = lt();
  const DeviceInfo dev = current_device();
  cublasLtHandle_t h = handle_for(dev.id);
  const bool integer = A.type == GemmType::kI8;
  if (integer != (B.type == GemmType::kI8) || integer != (c_type == GemmType::kI32))
    throw std::invalid_argument("gemm: int8 operands go with each other and an int32 result");
  const cublasComputeType_t compute = integer ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
  const cudaDataType_t scale_type = integer ? CUDA_R_32I : CUDA_R_32F;

  // cuBLAS is column-major: row-major C [M, N] = op(A) op(B) is column-major
  // C^T [N, M] = op(B)^T op(A)^T, and a stored row-major X is the column-major X^T.
  LtCall call;
  lt_check(api.cublasLtMatmulDescCreate(&call.desc, compute, scale_type), "matmul desc");
  const cublasOperation_t op_first = B.transpose ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = A.transpose ? CUBLAS_OP_T : CUBLAS_OP_N;
  lt_check(api.cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)),
           "set transa");
  lt_check(api.cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)),
           "set transb");
  lt_check(api.cublasLtMatrixLayoutCreate(&call.a, data_type(B.type), uint64_t(B.transpose ? K : N),
                                          uint64_t(B.transpose ? N : K), B.ld),
           "layout of B");
  lt_check(api.cublasLtMatrixLayoutCreate(&call.b, data_type(A.type), uint64_t(A.transpose ? M : K),
                                          uint64_t(A.transpose ? K : M), A.ld),
           "layout of A");
  lt_check(api.cublasLtMatrixLayoutCreate(&call.c, data_type(c_type), uint64_t(N), uint64_t(M), ldc), "layout of C");

  lt_check(api.cublasLtMatmulPreferenceCreate(&call.pref), "preference");
  const size_t ws_limit = kLtWorkspace;
  lt_check(api.cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_limit,
                                                    sizeof(ws_limit)),
           "set workspace");
  cublasLtMatmulHeuristicResult_t algo{};
  int found = 0;
  lt_check(
      api.cublasLtMatmulAlgoGetHeuristic(h, call.desc, call.a, call.b, call.c, call.c, call.pref, 1, &algo, &found),
      "heuristic");
  if (found == 0)
    throw std::runtime_error("cuBLASLt has no algorithm for this GEMM (M=" + std::to_string(M) + ", N=" +
                             std::to_string(N) + ", K=" + std::to_string(K) + "); int8 needs K a multiple of 4");
  StreamBuffer ws(algo.workspaceSize, stream);
  const int32_t ialpha = int32_t(alpha), ibeta = int32_t(beta);
  const void* pa = integer ? static_cast<const void*>(&ialpha) : &alpha;
  const void* pb = integer ? static_cast<const void*>(&ibeta) : &beta;
  lt_check(api.cublasLtMatmul(h, call.desc, pa, B.data, call.a, A.data, call.b, pb, C, call.c, C, call.c, &algo.algo,
                              ws.get(), algo.workspaceSize, stream),
           "matmul");
}

#else  // built without the cuBLASLt header

bool cublaslt_available(const char** why) {
  if (why)
    *why =
        "slmops was built without the cuBLASLt header (cublasLt.h): install nvidia-cublas (pip) or the CUDA "
        "toolkit's cuBLAS and rebuild";
  return false;
}

void gemm(int64_t, int64_t, int64_t, GemmOperand, GemmOperand, void*, GemmType, int64_t, float, float, cudaStream_t) {
  const char* why = nullptr;
  cublaslt_available(&why);
  throw std::runtime_error(why);
}

#endif

}  // namespace slmops::cuda
