// The one place that turns a CpuIsa into a kernel set. Every kernel family (the quantize
// rows, qmatmul, spmm, the KD passes) has a set per ISA, each a function returning a
// struct of function pointers from its own namespace (cpu::ref, cpu::avx2, cpu::avx512);
// the family's *_kernels_for(isa) asks this helper which one to use.
#pragma once

#include "slmops/cpu_features.h"

namespace slmops::cpu {

template <class Kernels>
using KernelSetFn = const Kernels& (*)();

// A family's kernel sets; an ISA whose objects this build lacks (the compiler had no flags
// for it) has nullptr.
template <class Kernels>
struct IsaKernelSets {
  KernelSetFn<Kernels> ref;
  KernelSetFn<Kernels> avx2;
  KernelSetFn<Kernels> avx512;
};

// The set for `isa` after resolve_cpu_isa: kAuto becomes the dispatcher's choice (the
// detected ISA capped by SLMOPS_MAX_CPU_ISA), and an ISA that cannot run here throws
// std::invalid_argument. A resolved ISA without compiled objects falls back to ref
// (resolve_cpu_isa never returns one: available_cpu_isas() counts only compiled ISAs).
template <class Kernels>
const Kernels& kernels_for_isa(CpuIsa isa, const IsaKernelSets<Kernels>& sets) {
  switch (resolve_cpu_isa(isa)) {
    case CpuIsa::kAvx512:
      if (sets.avx512) return sets.avx512();
      break;
    case CpuIsa::kAvx2:
      if (sets.avx2) return sets.avx2();
      break;
    default: break;
  }
  return sets.ref();
}

}  // namespace slmops::cpu

// The IsaKernelSets of the functions named `fn` in cpu::ref, cpu::avx2 and cpu::avx512,
// those of ISAs not compiled in left null (their declarations exist only when they are).
#ifdef SLMOPS_HAVE_AVX2
#define SLMOPS_CPU_AVX2_KERNELS(fn) &::slmops::cpu::avx2::fn
#else
#define SLMOPS_CPU_AVX2_KERNELS(fn) nullptr
#endif
#ifdef SLMOPS_HAVE_AVX512
#define SLMOPS_CPU_AVX512_KERNELS(fn) &::slmops::cpu::avx512::fn
#else
#define SLMOPS_CPU_AVX512_KERNELS(fn) nullptr
#endif
#define SLMOPS_CPU_ISA_KERNELS(fn) {&::slmops::cpu::ref::fn, SLMOPS_CPU_AVX2_KERNELS(fn), SLMOPS_CPU_AVX512_KERNELS(fn)}
