// Layer 1: turns a Python array (numpy through the buffer protocol, anything else through
// DLPack, e.g. torch CPU or CUDA tensors) into a borrowed, validated view for a kernel.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "slmops/dtype.h"

namespace slmops::bindings {

namespace py = pybind11;

enum class ElemType { kF32, kF16, kBF16, kU8, kI8, kU16, kI16, kI32, kI64, kOther };
const char* elem_type_name(ElemType t);

struct TensorArg {
  std::string name;  // the argument name used in error messages
  void* data = nullptr;
  ElemType type = ElemType::kOther;
  std::vector<int64_t> shape;
  bool cuda = false;
  int device_id = 0;
  bool writeable = true;
  bool copied = false;  // data is a native, aligned copy of the caller's array (inputs only)
  py::object owner;     // keeps the exporter's buffer (or the copy) alive while the kernel runs

  int64_t numel() const;
  std::string shape_str() const;
  DType float_dtype() const;  // throws TypeError-mapped exception unless f32/f16/bf16
};

// `cuda_stream` is forwarded to __dlpack__(stream=...) so the producer orders its pending
// work before the kernel's stream. Rejects non-contiguous arrays with a message that says
// to call .contiguous() / np.ascontiguousarray. The kernels read native-endian values
// through typed, element-aligned pointers, so a byte-swapped numpy array or a CPU array
// whose data is not aligned to its element size is read from a converted copy (`copied`;
// expect_writeable rejects such an array as an output: the kernel would write the copy).
TensorArg tensor_arg(py::handle obj, const char* name, py::object cuda_stream = py::none());

// Validation helpers; each raises ValueError/TypeError that names the argument.
void expect_ndim(const TensorArg& t, int ndim, const char* what);
void expect_type(const TensorArg& t, std::initializer_list<ElemType> types);
void expect_numel(const TensorArg& t, int64_t n, const char* what);
void expect_writeable(const TensorArg& t);
void expect_same_device(const TensorArg& a, const TensorArg& b);

}  // namespace slmops::bindings
