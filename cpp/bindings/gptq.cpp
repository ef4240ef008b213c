// slmops._C: the linear algebra of calibrated compression: Hessian accumulation, the
// inverse Hessian's upper Cholesky factor, GPTQ's column loop and SparseGPT.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common.h"
#include "common/checked_int.h"
#include "slmops/gptq.h"

namespace slmops::bindings {
namespace {

// A float32 CPU matrix argument with the given shape (rows, cols); -1 takes any.
TensorArg f32_matrix(py::handle obj, const char* name, int64_t rows, int64_t cols, bool writing) {
  TensorArg t = tensor_arg(obj, name);
  expect_cpu(t);
  bindings::expect_type(t, {ElemType::kF32});
  bindings::expect_ndim(t, 2, "a 2-D matrix");
  if ((rows >= 0 && t.shape[0] != rows) || (cols >= 0 && t.shape[1] != cols))
    throw py::value_error(t.name + " must have shape [" + std::to_string(rows) + ", " + std::to_string(cols) +
                          "], got " + t.shape_str());
  if (writing) bindings::expect_writeable(t);
  return t;
}

void py_hessian_accumulate(py::handle H, py::handle X, bool reference) {
  TensorArg x = f32_matrix(X, "X", -1, -1, false);
  const int64_t K = x.shape[1];
  TensorArg h = f32_matrix(H, "H", K, K, true);
  py::gil_scoped_release release;
  (reference ? ref::hessian_accumulate : hessian_accumulate)(static_cast<float*>(h.data),
                                                             static_cast<const float*>(x.data), x.shape[0], K, K);
}

void py_cholesky_inverse_upper(py::handle H, bool reference) {
  TensorArg h = f32_matrix(H, "H", -1, -1, true);
  if (h.shape[0] != h.shape[1]) throw py::value_error("H must be square, got " + h.shape_str());
  py::gil_scoped_release release;
  try {
    (reference ? ref::cholesky_inverse_upper : cholesky_inverse_upper)(static_cast<float*>(h.data), h.shape[0]);
  } catch (const std::domain_error& e) {
    py::gil_scoped_acquire acquire;
    throw py::value_error(e.what());
  }
}

GptqGrid make_grid(int bits, bool symmetric, int64_t group_size, bool mse) {
  if (bits < 2 || bits > 8) throw py::value_error("bits must be in [2, 8], got " + std::to_string(bits));
  if (group_size < 0) throw py::value_error("group_size must be >= 0");
  return GptqGrid{bits, symmetric, group_size, mse};
}

void py_gptq_grid_params(py::handle W, int bits, bool symmetric, int64_t group_size, py::handle scales,
                         py::handle zeros, bool mse) {
  TensorArg w = f32_matrix(W, "W", -1, -1, false);
  const GptqGrid grid = make_grid(bits, symmetric, group_size, mse);
  const int64_t N = w.shape[0], K = w.shape[1], G = group_size ? group_size : K;
  TensorArg s = f32_matrix(scales, "scales", N, ceil_div(K, G), true);
  TensorArg z = tensor_arg(zeros, "zeros");
  bindings::expect_type(z, {ElemType::kU8});
  bindings::expect_numel(z, s.numel(), "one zero per scale");
  py::gil_scoped_release release;
  gptq_grid_params(static_cast<const float*>(w.data), N, K, grid, static_cast<float*>(s.data),
                   static_cast<uint8_t*>(z.data));
}

void py_gptq_quantize(py::handle W, py::handle U, int bits, bool symmetric, int64_t group_size, py::handle col_group,
                      py::handle scales, py::handle zeros, py::handle codes, int64_t block, bool reference, bool mse) {
  TensorArg w = f32_matrix(W, "W", -1, -1, true);
  const int64_t N = w.shape[0], K = w.shape[1];
  TensorArg u = f32_matrix(U, "U", K, K, false);
  const GptqGrid grid = make_grid(bits, symmetric, group_size, mse);
  const int32_t* groups = nullptr;
  int64_t n_groups = group_size ? ceil_div(K, group_size) : 0;
  TensorArg g;
  if (!col_group.is_none()) {
    g = tensor_arg(col_group, "col_group");
    bindings::expect_type(g, {ElemType::kI32});
    bindings::expect_numel(g, K, "one group per column");
    groups = static_cast<const int32_t*>(g.data);
    n_groups = 0;
    for (int64_t j = 0; j < K; ++j) {
      if (groups[j] < 0) throw py::value_error("col_group must be >= 0");
      n_groups = std::max<int64_t>(n_groups, int64_t(groups[j]) + 1);
    }
  } else if (group_size == 0) {
    throw py::value_error("group_size 0 (one group per row) needs col_group and precomputed scales");
  }
  if (block <= 0) throw py::value_error("block must be positive");
  TensorArg s = f32_matrix(scales, "scales", N, n_groups, true);
  TensorArg z = tensor_arg(zeros, "zeros"), c = tensor_arg(codes, "codes");
  bindings::expect_type(z, {ElemType::kU8});
  bindings::expect_numel(z, checked_mul(N, n_groups, "N * groups"), "N * groups");
  bindings::expect_type(c, {ElemType::kU8});
  bindings::expect_numel(c, N * K, "N * K");
  bindings::expect_writeable(z);
  bindings::expect_writeable(c);
  py::gil_scoped_release release;
  auto* wp = static_cast<float*>(w.data);
  const auto* up = static_cast<const float*>(u.data);
  auto* sp = static_cast<float*>(s.data);
  auto* zp = static_cast<uint8_t*>(z.data);
  auto* cp = static_cast<uint8_t*>(c.data);
  if (reference)
    ref::gptq_quantize(wp, N, K, up, grid, groups, sp, zp, cp);
  else
    gptq_quantize(wp, N, K, up, grid, groups, sp, zp, cp, block);
}

// bits 0: prune only (scales, zeros, codes may be None).
void py_sparsegpt_prune(py::handle W, py::handle U, float sparsity, int n, int m, int bits, bool symmetric,
                        int64_t group_size, py::handle scales, py::handle zeros, py::handle codes, py::handle mask,
                        int64_t block, bool reference, bool mse) {
  TensorArg w = f32_matrix(W, "W", -1, -1, true);
  const int64_t N = w.shape[0], K = w.shape[1];
  TensorArg u = f32_matrix(U, "U", K, K, false);
  TensorArg mk = tensor_arg(mask, "mask");
  bindings::expect_type(mk, {ElemType::kU8});
  bindings::expect_numel(mk, N * K, "N * K");
  bindings::expect_writeable(mk);
  if (block <= 0) throw py::value_error("block must be positive");
  const SparsePattern pattern{sparsity, n, m};
  GptqGrid grid;
  TensorArg s, z, c;
  if (bits) {
    grid = make_grid(bits, symmetric, group_size, mse);
    const int64_t G = group_size ? group_size : K;
    s = f32_matrix(scales, "scales", N, ceil_div(K, G), true);
    z = tensor_arg(zeros, "zeros");
    c = tensor_arg(codes, "codes");
    bindings::expect_type(z, {ElemType::kU8});
    bindings::expect_numel(z, s.numel(), "one zero per scale");
    bindings::expect_type(c, {ElemType::kU8});
    bindings::expect_numel(c, N * K, "N * K");
    bindings::expect_writeable(z);
    bindings::expect_writeable(c);
  }
  py::gil_scoped_release release;
  auto* wp = static_cast<float*>(w.data);
  const auto* up = static_cast<const float*>(u.data);
  const GptqGrid* gp = bits ? &grid : nullptr;
  auto* sp = static_cast<float*>(s.data);
  auto* zp = static_cast<uint8_t*>(z.data);
  auto* cp = static_cast<uint8_t*>(c.data);
  auto* mp = static_cast<uint8_t*>(mk.data);
  try {
    if (reference)
      ref::sparsegpt_prune(wp, N, K, up, pattern, gp, sp, zp, cp, mp);
    else
      sparsegpt_prune(wp, N, K, up, pattern, gp, sp, zp, cp, mp, block);
  } catch (const std::invalid_argument& e) {
    py::gil_scoped_acquire acquire;
    throw py::value_error(e.what());
  }
}

}  // namespace

void register_gptq(py::module_& m) {
  m.def("hessian_accumulate", &py_hessian_accumulate, py::arg("H"), py::arg("X"), py::arg("reference") = false,
        "H [K, K] += X^T X (float32, in place).");
  m.def("cholesky_inverse_upper", &py_cholesky_inverse_upper, py::arg("H"), py::arg("reference") = false,
        "In place: H -> U, upper Cholesky factor of H^-1. ValueError if H is not positive definite.");
  m.def("gptq_grid_params", &py_gptq_grid_params, py::arg("W"), py::arg("bits"), py::arg("symmetric"),
        py::arg("group_size"), py::arg("scales"), py::arg("zeros"), py::arg("mse") = false);
  m.def("gptq_quantize", &py_gptq_quantize, py::arg("W"), py::arg("U"), py::arg("bits"), py::arg("symmetric"),
        py::arg("group_size"), py::arg("col_group").none(true), py::arg("scales"), py::arg("zeros"), py::arg("codes"),
        py::arg("block") = 128, py::arg("reference") = false, py::arg("mse") = false);
  m.def("sparsegpt_prune", &py_sparsegpt_prune, py::arg("W"), py::arg("U"), py::arg("sparsity"), py::arg("n"),
        py::arg("m"), py::arg("bits"), py::arg("symmetric"), py::arg("group_size"), py::arg("scales").none(true),
        py::arg("zeros").none(true), py::arg("codes").none(true), py::arg("mask"), py::arg("block") = 128,
        py::arg("reference") = false, py::arg("mse") = false,
        "SparseGPT in place on W [N, K] given U (cholesky_inverse_upper of the Hessian): n:m when m > 0, "
        "else `sparsity` of each block; bits > 0 also quantizes the kept weights (GPTQ's grid, searched with mse).");
}

}  // namespace slmops::bindings
