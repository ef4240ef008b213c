// CUDA kernels. Declared always; defined in cpp/src/cuda/ when the build has CUDA and
// in cpp/src/cuda/cuda_stub.cpp otherwise, where every entry point throws.
#pragma once

#include <cstdint>
#include <string>

#include "slmops/quant.h"

namespace slmops::cuda {

bool compiled();                  // this build has CUDA kernels
int device_count();               // GPUs visible now; 0 without CUDA or without a GPU
std::string architectures();      // CMAKE_CUDA_ARCHITECTURES of the build, "" without CUDA

// Dequantizes src (device pointers, layout of quant_layout) into dst [rows, K] on the
// GPU, enqueued on `stream` (a cudaStream_t; nullptr = legacy default stream).
// Throws std::runtime_error on a CUDA error, std::invalid_argument on bad arguments.
void dequantize(const QuantSpec& spec, ConstQuantStorage src, int64_t rows, int64_t K, void* dst, DType dst_dtype,
                void* stream);

}  // namespace slmops::cuda
