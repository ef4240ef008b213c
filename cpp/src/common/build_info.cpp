#include "slmops/build_info.h"

#include "onednn/onednn_info.h"
#include "slmops/cpu_features.h"
#include "slmops/cuda.h"
#include "slmops/threading.h"

namespace slmops {

BuildInfo build_info() {
  BuildInfo b;
  b.version = SLMOPS_VERSION;
#if defined(__clang__)
  b.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  b.compiler = "gcc " __VERSION__;
#endif
  b.openmp = openmp_enabled();
  b.num_threads = get_num_threads();
  b.cpu_isa_detected = cpu_isa_name(detected_cpu_isa());
  b.cpu_isa_active = cpu_isa_name(active_cpu_isa());
  b.cpu_isas_compiled.push_back("ref");
#ifdef SLMOPS_HAVE_AVX2
  b.cpu_isas_compiled.push_back("avx2");
#endif
#ifdef SLMOPS_HAVE_AVX512
  b.cpu_isas_compiled.push_back("avx512");
#endif
  b.onednn_version = onednn::version();
  b.onednn = !b.onednn_version.empty();
  b.cuda = cuda::compiled();
  b.cuda_architectures = cuda::architectures();
  b.cuda_devices = cuda::device_count();
  return b;
}

}  // namespace slmops
