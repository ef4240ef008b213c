// CPU feature detection. Compiled with baseline flags only: nothing here may execute an
// instruction the detection has not yet proven available.
#include "slmops/cpu_features.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define SLMOPS_X86 1
#endif

namespace slmops {
namespace {

#ifdef SLMOPS_X86
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}
#endif

CpuIsa detect() {
#ifdef SLMOPS_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return CpuIsa::kRef;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave) return CpuIsa::kRef;
  const uint64_t xcr0 = xgetbv0();
  // The OS must save YMM state (XCR0 bits 1, 2) for AVX2, and opmask + ZMM state
  // (bits 5, 6, 7) as well for AVX-512; cpuid alone does not say the OS enabled them.
  const bool os_ymm = (xcr0 & 0x6) == 0x6;
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return CpuIsa::kRef;
  const bool avx2 = b & (1u << 5), bmi2 = b & (1u << 8);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17);
  const bool avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  const bool avx512vnni = c & (1u << 11);
  if (os_zmm && avx2 && fma && f16c && avx512f && avx512dq && avx512bw && avx512vl && avx512vnni)
    return CpuIsa::kAvx512;
  if (os_ymm && avx2 && fma && f16c && bmi2) return CpuIsa::kAvx2;
#endif
  return CpuIsa::kRef;
}

// Kernel sets compiled into this build (the compiler may lack an ISA's flags).
CpuIsa best_compiled() {
#if defined(SLMOPS_HAVE_AVX512)
  return CpuIsa::kAvx512;
#elif defined(SLMOPS_HAVE_AVX2)
  return CpuIsa::kAvx2;
#else
  return CpuIsa::kRef;
#endif
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAuto: return "auto";
    case CpuIsa::kRef: return "ref";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
  }
  return "?";
}

CpuIsa cpu_isa_from_name(const std::string& name) {
  for (CpuIsa i : {CpuIsa::kAuto, CpuIsa::kRef, CpuIsa::kAvx2, CpuIsa::kAvx512})
    if (name == cpu_isa_name(i)) return i;
  throw std::invalid_argument("unknown CPU ISA '" + name + "'; expected 'auto', 'ref', 'avx2' or 'avx512'");
}

CpuIsa detected_cpu_isa() {
  static const CpuIsa isa = detect();
  return isa;
}

CpuIsa active_cpu_isa() {
  static const CpuIsa isa = [] {
    CpuIsa best = detected_cpu_isa();
    if (static_cast<int>(best_compiled()) < static_cast<int>(best)) best = best_compiled();
    if (const char* cap = std::getenv("SLMOPS_MAX_CPU_ISA"); cap && *cap) {
      try {
        const CpuIsa c = cpu_isa_from_name(cap);
        if (c != CpuIsa::kAuto && static_cast<int>(c) < static_cast<int>(best)) best = c;
      } catch (const std::invalid_argument&) {
        std::fprintf(stderr, "slmops: ignoring SLMOPS_MAX_CPU_ISA='%s' (expected ref, avx2 or avx512)\n", cap);
      }
    }
    return best;
  }();
  return isa;
}

std::vector<CpuIsa> available_cpu_isas() {
  std::vector<CpuIsa> out{CpuIsa::kRef};
  const int best = std::min(static_cast<int>(detected_cpu_isa()), static_cast<int>(best_compiled()));
  if (best >= static_cast<int>(CpuIsa::kAvx2)) out.push_back(CpuIsa::kAvx2);
  if (best >= static_cast<int>(CpuIsa::kAvx512)) out.push_back(CpuIsa::kAvx512);
  return out;
}

CpuIsa resolve_cpu_isa(CpuIsa isa) {
  if (isa == CpuIsa::kAuto) return active_cpu_isa();
  for (CpuIsa a : available_cpu_isas())
    if (a == isa) return isa;
  throw std::invalid_argument(std::string("CPU ISA '") + cpu_isa_name(isa) +
                              "' is not available on this machine (detected: " + cpu_isa_name(detected_cpu_isa()) +
                              ")");
}

}  // namespace slmops
