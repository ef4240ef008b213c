// slmops._C: the pybind11 module. Decodes and validates arguments, releases the GIL and
// calls layer 0. Outputs are allocated by the caller (python/slmops/ops), in the caller's
// framework, and passed in. Each op family registers its functions from its own file.
#include <pybind11/pybind11.h>

#include "common.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m, py::mod_gil_not_used()) {
  m.doc() = "slmops C++ kernels (layer 1 bindings). Use the slmops package, not this module, directly.";

  slmops::bindings::register_info(m);
  slmops::bindings::register_quant(m);
  slmops::bindings::register_gptq(m);
  slmops::bindings::register_qmatmul(m);
  slmops::bindings::register_sparse(m);
  slmops::bindings::register_kd(m);
  slmops::bindings::register_engine(m);
}
