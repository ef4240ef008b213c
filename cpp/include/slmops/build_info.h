// What this build of slmops contains and what it picked on this machine.
#pragma once

#include <string>
#include <vector>

namespace slmops {

struct BuildInfo {
  std::string version;
  std::string compiler;
  bool openmp = false;
  int num_threads = 1;
  std::string cpu_isa_detected;
  std::string cpu_isa_active;
  std::vector<std::string> cpu_isas_compiled;
  bool onednn = false;
  std::string onednn_version;  // empty when built without oneDNN
  bool cuda = false;
  std::string cuda_architectures;  // e.g. "75;80;86;89;90", empty without CUDA
  int cuda_devices = 0;            // GPUs visible at run time
};

BuildInfo build_info();

}  // namespace slmops
