// Layer 1, shared by the op families: the registration function of each family (one file
// each, all called from module.cpp), and the argument handling several families use: a
// QuantSpec from its Python options, the storage buffers of a quantized tensor, arrays a
// pack borrows, and running a kernel with the GIL released.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "slmops/quant.h"
#include "tensor_arg.h"

namespace slmops::bindings {

void register_info(py::module_& m);     // info.cpp: build, threads, CPU ISAs, format table
void register_quant(py::module_& m);    // quant.cpp: quantize, dequantize, NF4 scales
void register_gptq(py::module_& m);     // gptq.cpp: Hessian, inverse factor, GPTQ, SparseGPT
void register_qmatmul(py::module_& m);  // qmatmul.cpp: packed weights, CPU and CUDA qmatmul
void register_sparse(py::module_& m);   // sparse.cpp: n:m and CSR weights, spmm
void register_kd(py::module_& m);       // kd.cpp: distillation losses
void register_engine(py::module_& m);   // engine.cpp: the decode engine and its sampler

// One string option's choices as Python spells them, with the enum value of each. A family
// keeps its tables beside its bindings; the parser and the list exported to Python (e.g.
// _C.kd_divergences(), which slmops.ops reads for its tuples) both read the table.
template <class E>
struct Choice {
  const char* name;
  E value;
};

// "'a', 'b' or 'c'".
std::string quoted_alternatives(const std::vector<std::string>& names);

template <class E, size_t N>
std::vector<std::string> choice_names(const Choice<E> (&choices)[N]) {
  std::vector<std::string> out;
  for (const Choice<E>& c : choices) out.push_back(c.name);
  return out;
}

// The value named `name`; else ValueError "<what> must be 'a', 'b' or 'c', got '<name>'".
template <class E, size_t N>
E parse_choice(const std::string& name, const Choice<E> (&choices)[N], const char* what) {
  for (const Choice<E>& c : choices)
    if (name == c.name) return c.value;
  throw py::value_error(std::string(what) + " must be " + quoted_alternatives(choice_names(choices)) + ", got '" +
                        name + "'");
}

QuantSpec make_spec(const std::string& format, int64_t group_size, bool symmetric);

// The storage buffers of one quantized tensor, checked against the layout for [rows, K].
struct StorageArgs {
  TensorArg data, scales, zero_points;
  bool has_scales = false, has_zero_points = false;
};

StorageArgs storage_args(const QuantSpec& spec, const QuantLayout& L, int64_t rows, py::handle data, py::handle scales,
                         py::handle zero_points, bool writing, py::object stream);

void expect_cpu(const TensorArg& t);

// Runs fn with the GIL released; the kernels' std::invalid_argument becomes ValueError.
template <class Fn>
void run_released(Fn fn) {
  try {
    py::gil_scoped_release release;
    fn();
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

// The cudaStream_t of a Python stream handle (torch's Stream.cuda_stream, an int).
void* stream_ptr(const py::object& stream);

// A Python array that a pack (PackedWeight, NMSparseWeight, CsrWeight) reads at every
// matmul, with the address and size it had when packed. Holding a reference keeps the
// array alive but not its memory: ndarray.resize(refcheck=False) or torch's resize_/set_
// can move it. Every use re-reads the array and refuses to run on memory that moved.
struct Borrowed {
  py::object keep;    // what keeps the memory alive (the array, a DLPack capsule, or our copy)
  py::object source;  // the caller's array, re-read at each use; None when we own a copy
  std::string name;
  const void* data = nullptr;
  int64_t numel = 0;
};

Borrowed borrow(py::handle obj, const TensorArg& t);
// Raises ValueError if the array was resized or reallocated since it was borrowed.
void check_borrowed(const Borrowed& b);

}  // namespace slmops::bindings
