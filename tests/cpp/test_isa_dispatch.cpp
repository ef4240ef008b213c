// The one CpuIsa -> kernel set choice (cpu/isa_dispatch.h) and the families wired to it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cpu/isa_dispatch.h"
#include "cpu/kd_kernels.h"
#include "cpu/qmatmul_kernels.h"
#include "cpu/row_kernels.h"
#include "cpu/spmm_kernels.h"

using namespace slmops;
using namespace slmops::cpu;

namespace {

struct Tagged {
  CpuIsa isa;
};
const Tagged& ref_set() {
  static const Tagged t{CpuIsa::kRef};
  return t;
}
const Tagged& avx2_set() {
  static const Tagged t{CpuIsa::kAvx2};
  return t;
}
const Tagged& avx512_set() {
  static const Tagged t{CpuIsa::kAvx512};
  return t;
}

bool available(CpuIsa isa) {
  for (CpuIsa a : available_cpu_isas())
    if (a == isa) return true;
  return false;
}

TEST(IsaDispatch, EachAvailableIsaGetsItsOwnSetAndAutoTheActiveOne) {
  const IsaKernelSets<Tagged> sets{&ref_set, &avx2_set, &avx512_set};
  for (CpuIsa isa : available_cpu_isas()) EXPECT_EQ(kernels_for_isa(isa, sets).isa, isa) << cpu_isa_name(isa);
  EXPECT_EQ(kernels_for_isa(CpuIsa::kAuto, sets).isa, active_cpu_isa());
}

TEST(IsaDispatch, AnIsaWithoutCompiledKernelsFallsBackToRef) {
  const IsaKernelSets<Tagged> sets{&ref_set, nullptr, nullptr};
  for (CpuIsa isa : available_cpu_isas()) EXPECT_EQ(kernels_for_isa(isa, sets).isa, CpuIsa::kRef) << cpu_isa_name(isa);
}

TEST(IsaDispatch, AnIsaThatCannotRunHereIsRefused) {
  const IsaKernelSets<Tagged> sets{&ref_set, &avx2_set, &avx512_set};
  int refused = 0;
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512})
    if (!available(isa)) {
      EXPECT_THROW(kernels_for_isa(isa, sets), std::invalid_argument) << cpu_isa_name(isa);
      ++refused;
    }
  if (refused == 0) GTEST_SKIP() << "every ISA runs on this machine";
}

// Each family's *_kernels_for returns the set compiled for the ISA asked for.
TEST(IsaDispatch, EveryFamilyPicksTheSetOfTheIsa) {
  for (CpuIsa isa : available_cpu_isas()) {
    const void *rows = &ref::row_kernels(), *kd = &ref::kd_kernels(), *spmm = &ref::spmm_kernels();
#ifdef SLMOPS_HAVE_AVX2
    if (isa == CpuIsa::kAvx2) rows = &avx2::row_kernels(), kd = &avx2::kd_kernels(), spmm = &avx2::spmm_kernels();
#endif
#ifdef SLMOPS_HAVE_AVX512
    if (isa == CpuIsa::kAvx512)
      rows = &avx512::row_kernels(), kd = &avx512::kd_kernels(), spmm = &avx512::spmm_kernels();
#endif
    EXPECT_EQ(&row_kernels_for(isa), rows) << cpu_isa_name(isa);
    EXPECT_EQ(&kd_kernels_for(isa), kd) << cpu_isa_name(isa);
    EXPECT_EQ(&spmm_kernels_for(isa), spmm) << cpu_isa_name(isa);
  }
}

// Run by ctest a second time with SLMOPS_MAX_CPU_ISA set (tests/cpp/CMakeLists.txt): kAuto
// then never picks a set above the cap, and picks the capped ISA itself where it can run.
TEST(IsaDispatch, AutoStaysUnderTheCap) {
  const char* cap = std::getenv("SLMOPS_MAX_CPU_ISA");
  if (!cap || !*cap) GTEST_SKIP() << "SLMOPS_MAX_CPU_ISA is not set";
  const CpuIsa capped = cpu_isa_from_name(cap);
  const IsaKernelSets<Tagged> sets{&ref_set, &avx2_set, &avx512_set};
  const CpuIsa picked = kernels_for_isa(CpuIsa::kAuto, sets).isa;
  EXPECT_LE(static_cast<int>(picked), static_cast<int>(capped));
  if (available(capped)) {
    EXPECT_EQ(picked, capped);
  }
  if (capped == CpuIsa::kRef) {
    EXPECT_EQ(&row_kernels_for(CpuIsa::kAuto), &ref::row_kernels());
  }
}

}  // namespace
