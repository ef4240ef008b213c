// Which CPU instruction sets this machine offers, and which kernel set is used.
#pragma once

#include <string>
#include <vector>

namespace slmops {

// Kernel sets, in increasing order of requirement. kAvx512 needs AVX-512 F/BW/DQ/VL
// and VNNI (Ice Lake, Zen 4 and newer), the set our int8 dot-product paths rely on.
enum class CpuIsa : int { kAuto = -1, kRef = 0, kAvx2 = 1, kAvx512 = 2 };

const char* cpu_isa_name(CpuIsa isa);
// Throws std::invalid_argument for an unknown name. Accepts "auto".
CpuIsa cpu_isa_from_name(const std::string& name);

// Best kernel set the CPU and OS support (cpuid + XGETBV), ignoring any cap.
CpuIsa detected_cpu_isa();
// The set the dispatcher uses: detected_cpu_isa() capped by SLMOPS_MAX_CPU_ISA, read
// once at first use. An invalid value of the variable is reported on stderr and ignored.
CpuIsa active_cpu_isa();
// Every set that can run here, ref first.
std::vector<CpuIsa> available_cpu_isas();
// Resolves kAuto to active_cpu_isa(); throws std::invalid_argument if `isa` cannot run here.
CpuIsa resolve_cpu_isa(CpuIsa isa);

}  // namespace slmops
