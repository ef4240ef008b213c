// Code shared by the CUDA kernels and the host: functions marked SLMOPS_HD compile for the
// GPU under nvcc and as plain inline C++ everywhere else, so the host tests
// (tests/cpp/test_cuda_host.cpp) run the kernels' indexing and arithmetic on the CPU in
// builds without CUDA and on machines without a GPU.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SLMOPS_HD __host__ __device__ __forceinline__
#else
#define SLMOPS_HD inline
#endif
#if defined(__CUDA_ARCH__)  // the device pass only: the host compiler does not know the pragma
#define SLMOPS_UNROLL _Pragma("unroll")
#else
#define SLMOPS_UNROLL
#endif

namespace slmops::cuda::hd {

// Rounded float products and differences that nvcc never contracts into an FMA, so device
// results match the CPU ref kernels bit for bit (the host build has -ffp-contract=off).
SLMOPS_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
SLMOPS_HD float sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// 16 bytes from p (16-byte aligned on the device: one coalesced vector load).
struct Bytes16 {
  uint32_t w[4];
};
SLMOPS_HD Bytes16 load16(const uint8_t* p) {
  Bytes16 b;
#if defined(__CUDA_ARCH__)
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  b.w[0] = v.x;
  b.w[1] = v.y;
  b.w[2] = v.z;
  b.w[3] = v.w;
#else
  std::memcpy(b.w, p, 16);
#endif
  return b;
}

// Code of element i (0..7) of a little-endian 32-bit word of 4-bit codes: element 2j in
// the low nibble of byte j (MatMulNBits int4), or in the high nibble (bitsandbytes nf4).
SLMOPS_HD int nibble(uint32_t word, int i, bool high_first) {
  const int shift = 8 * (i >> 1) + (((i & 1) ^ int(high_first)) ? 4 : 0);
  return int((word >> shift) & 0xFu);
}

// Byte i (0..3) of a word as a signed int8 value.
SLMOPS_HD int sbyte(uint32_t word, int i) { return int(int8_t(uint8_t(word >> (8 * i)))); }

}  // namespace slmops::cuda::hd
