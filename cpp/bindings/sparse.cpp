// slmops._C: n:m and CSR sparse weights borrowed for the spmm kernels, spmm, and the dense
// sgemm baseline of the sparse benchmarks.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "common/checked_int.h"
#include "packs.h"
#include "slmops/cpu_features.h"
#include "slmops/gemm.h"
#include "slmops/spmm.h"

namespace slmops::bindings {
namespace {

constexpr Choice<SparseValueType> kValueTypes[] = {
    {"float32", SparseValueType::kF32},
    {"bfloat16", SparseValueType::kBF16},
    {"int8", SparseValueType::kInt8},
    {"int4", SparseValueType::kInt4},
};
constexpr Choice<SpmmActivation> kSpmmActivations[] = {
    {"float", SpmmActivation::kFloat},
    {"int8", SpmmActivation::kInt8},
};

// The sparse layouts by name: the n:m patterns of layer 0 (kNMPatterns), then CSR (n = m = 0).
py::list sparse_patterns() {
  py::list out;
  for (const NMPattern& p : kNMPatterns) {
    NMSparseWeight w;
    w.n = p.n;
    w.m = p.m;
    py::dict d;
    d["name"] = std::to_string(p.n) + ":" + std::to_string(p.m);
    d["n"] = p.n;
    d["m"] = p.m;
    d["index_bits"] = w.index_bits();
    out.append(d);
  }
  py::dict csr;
  csr["name"] = "csr";
  csr["n"] = 0;
  csr["m"] = 0;
  csr["index_bits"] = 0;
  out.append(csr);
  return out;
}

const void* cpu_array(TensorArg& t, std::initializer_list<ElemType> types, int64_t numel, const char* what) {
  expect_cpu(t);
  bindings::expect_type(t, types);
  bindings::expect_numel(t, numel, what);
  return t.data;
}

std::unique_ptr<PyNMWeight> py_pack_nm(int n, int m, int64_t N, int64_t K, const std::string& value_type,
                                       py::handle values, py::handle scales, py::handle zero_points, int64_t group,
                                       py::handle indices) {
  const SparseValueType type = parse_choice(value_type, kValueTypes, "values");
  const NMSparseWeight shape = nm_layout(N, K, n, m, type, group);  // validated: the sizes below fit
  auto out = std::make_unique<PyNMWeight>();
  TensorArg va = tensor_arg(values, "values"), ia = tensor_arg(indices, "indices"), sa, za;
  const int64_t groups = shape.groups();
  const int64_t value_count = checked_mul(N, type == SparseValueType::kInt4 ? shape.int4_row_bytes() : shape.kept(),
                                          "rows * value bytes per row");
  const void* v =
      cpu_array(va,
                type == SparseValueType::kF32    ? std::initializer_list<ElemType>{ElemType::kF32}
                : type == SparseValueType::kBF16 ? std::initializer_list<ElemType>{ElemType::kU16, ElemType::kBF16}
                : type == SparseValueType::kInt8 ? std::initializer_list<ElemType>{ElemType::kI8, ElemType::kU8}
                                                 : std::initializer_list<ElemType>{ElemType::kU8},
                value_count, "the kept values");
  const int64_t index_bytes = checked_mul(N, shape.index_row_bytes(), "rows * index bytes per row");
  const void* idx = cpu_array(ia, {ElemType::kU8}, index_bytes, "rows * index bytes per row");
  const float* s = nullptr;
  const uint8_t* z = nullptr;
  if (type == SparseValueType::kInt8 || type == SparseValueType::kInt4) {
    if (scales.is_none()) throw py::value_error("int8 and int4 values need scales");
    sa = tensor_arg(scales, "scales");
    s = static_cast<const float*>(
        cpu_array(sa, {ElemType::kF32}, checked_mul(N, groups, "rows * groups"), "rows * groups"));
    if (!zero_points.is_none()) {
      za = tensor_arg(zero_points, "zero_points");
      const int64_t zp_bytes = checked_mul(N, ceil_div(groups, 2), "rows * zero point bytes");
      z = static_cast<const uint8_t*>(cpu_array(za, {ElemType::kU8}, zp_bytes, "rows * ceil(groups / 2)"));
    }
  }
  out->w = make_nm_weight(N, K, n, m, type, v, s, z, group, static_cast<const uint8_t*>(idx));
  out->values = borrow(values, va);
  out->indices = borrow(indices, ia);
  out->scales = borrow(scales, sa);
  return out;
}

std::unique_ptr<PyCsrWeight> py_pack_csr(int64_t N, int64_t K, py::handle row_ptr, py::handle cols, py::handle values) {
  if (N <= 0 || K <= 0)
    throw py::value_error("shape must be positive, got (" + std::to_string(N) + ", " + std::to_string(K) + ")");
  auto out = std::make_unique<PyCsrWeight>();
  TensorArg ra = tensor_arg(row_ptr, "row_ptr"), ca = tensor_arg(cols, "cols"), va = tensor_arg(values, "values");
  const auto* rp = static_cast<const int64_t*>(
      cpu_array(ra, {ElemType::kI64}, checked_add(N, 1, "out_features + 1"), "out_features + 1"));
  out->row_ptr.assign(rp, rp + N + 1);
  const int64_t nnz = out->row_ptr.back();
  expect_cpu(ca);
  bindings::expect_type(ca, {ElemType::kI16, ElemType::kI32});
  bindings::expect_numel(ca, nnz, "row_ptr[-1] (the nonzeros)");
  const auto* cb = static_cast<const uint8_t*>(ca.data);
  out->cols.assign(cb, cb + size_t(nnz) * (ca.type == ElemType::kI16 ? 2 : 4));
  out->w.N = N;
  out->w.K = K;
  out->w.row_ptr = out->row_ptr.data();
  out->w.cols16 = ca.type == ElemType::kI16;
  out->w.cols = out->cols.data();
  out->w.values = static_cast<const float*>(cpu_array(va, {ElemType::kF32}, nnz, "row_ptr[-1] (the nonzeros)"));
  validate_csr(out->w);
  out->values = borrow(values, va);
  return out;
}

// x [M, K] fp32 and y [M, N] fp32 (the ops layer converts other dtypes).
template <class Weight, class Fn>
void py_spmm(const Weight& w, py::handle x, py::handle bias, py::handle y, const std::string& isa, Fn fn) {
  TensorArg xa = tensor_arg(x, "x"), ya = tensor_arg(y, "y"), ba;
  expect_cpu(xa);
  bindings::expect_ndim(xa, 2, "[M, in_features]");
  bindings::expect_type(xa, {ElemType::kF32});
  if (xa.shape[1] != w.K)
    throw py::value_error("x has " + std::to_string(xa.shape[1]) +
                          " features, the weight expects in_features = " + std::to_string(w.K));
  const int64_t M = xa.shape[0];
  expect_cpu(ya);
  bindings::expect_type(ya, {ElemType::kF32});
  bindings::expect_writeable(ya);
  if (ya.shape.size() != 2 || ya.shape[0] != M || ya.shape[1] != w.N)
    throw py::value_error("y must have shape (" + std::to_string(M) + ", " + std::to_string(w.N) + "), got " +
                          ya.shape_str());
  const float* bias_ptr = nullptr;
  if (!bias.is_none()) {
    ba = tensor_arg(bias, "bias");
    bias_ptr = static_cast<const float*>(cpu_array(ba, {ElemType::kF32}, w.N, "out_features"));
  }
  const CpuIsa cpu_isa = cpu_isa_from_name(isa);
  py::gil_scoped_release release;
  fn(w, static_cast<const float*>(xa.data), M, bias_ptr, static_cast<float*>(ya.data), cpu_isa);
}

// y [M, N] = x [M, K] @ w [N, K]^T in fp32 through slmops' sgemm (oneDNN's where built
// with it): the dense baseline of the sparse benchmarks.
void py_sgemm_nt(py::handle x, py::handle w, py::handle y) {
  TensorArg xa = tensor_arg(x, "x"), wa = tensor_arg(w, "w"), ya = tensor_arg(y, "y");
  for (TensorArg* t : {&xa, &wa, &ya}) {
    expect_cpu(*t);
    bindings::expect_ndim(*t, 2, "2-D");
    bindings::expect_type(*t, {ElemType::kF32});
  }
  bindings::expect_writeable(ya);
  const int64_t M = xa.shape[0], K = xa.shape[1], N = wa.shape[0];
  if (wa.shape[1] != K || ya.shape[0] != M || ya.shape[1] != N)
    throw py::value_error("shapes must be x [M, K], w [N, K], y [M, N]; got x " + xa.shape_str() + ", w " +
                          wa.shape_str() + ", y " + ya.shape_str());
  py::gil_scoped_release release;
  sgemm(false, true, M, N, K, 1.0f, static_cast<const float*>(xa.data), K, static_cast<const float*>(wa.data), K, 0.0f,
        static_cast<float*>(ya.data), N);
}

}  // namespace

void register_sparse(py::module_& m) {
  m.def("sparse_patterns", &sparse_patterns,
        "The sparse layouts: name ('2:4', ...; 'csr'), n and m (0 for csr), index_bits per kept value.");
  m.def("sparse_value_types", [] { return choice_names(kValueTypes); }, "The n:m value types pack_nm accepts.");
  m.def(
      "spmm_activations", [] { return choice_names(kSpmmActivations); },
      "The activation modes spmm accepts for n:m weights.");
  py::class_<PyNMWeight>(m, "NMSparseWeight", "An n:m sparse weight borrowed for the spmm kernels.")
      .def_property_readonly("shape", [](const PyNMWeight& p) { return py::make_tuple(p.w.N, p.w.K); });
  py::class_<PyCsrWeight>(m, "CsrWeight", "A CSR weight borrowed for the spmm kernels.")
      .def_property_readonly("shape", [](const PyCsrWeight& p) { return py::make_tuple(p.w.N, p.w.K); });
  m.def("pack_nm", &py_pack_nm, py::arg("n"), py::arg("m"), py::arg("N"), py::arg("K"), py::arg("values_type"),
        py::arg("values"), py::arg("scales").none(true), py::arg("zero_points").none(true), py::arg("group"),
        py::arg("indices"));
  m.def("sgemm_nt", &py_sgemm_nt, py::arg("x"), py::arg("w"), py::arg("y"));
  m.def("pack_csr", &py_pack_csr, py::arg("N"), py::arg("K"), py::arg("row_ptr"), py::arg("cols"), py::arg("values"));
  m.def(
      "spmm",
      [](const PyNMWeight& w, py::handle x, py::handle bias, py::handle y, const std::string& isa,
         const std::string& activation) {
        const SpmmActivation act = parse_choice(activation, kSpmmActivations, "activation");
        w.check();
        py_spmm(w.w, x, bias, y, isa,
                [act](const NMSparseWeight& w, const float* x, int64_t M, const float* b, float* y, CpuIsa i) {
                  spmm_nm(w, x, M, b, y, i, act);
                });
      },
      py::arg("weight"), py::arg("x"), py::arg("bias").none(true), py::arg("y"), py::arg("isa") = "auto",
      py::arg("activation") = "float");
  m.def(
      "spmm",
      [](const PyCsrWeight& w, py::handle x, py::handle bias, py::handle y, const std::string& isa) {
        w.check();
        py_spmm(w.w, x, bias, y, isa, spmm_csr);
      },
      py::arg("weight"), py::arg("x"), py::arg("bias").none(true), py::arg("y"), py::arg("isa") = "auto");
}

}  // namespace slmops::bindings
