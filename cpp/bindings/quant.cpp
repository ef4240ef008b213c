// slmops._C: quantize and dequantize in every format (CPU; dequantize on CUDA too), and
// NF4's double quantization of scales.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "common.h"
#include "common/checked_int.h"
#include "slmops/cpu_features.h"
#include "slmops/cuda.h"
#include "slmops/quant.h"

namespace slmops::bindings {
namespace {

py::dict layout_dict(const QuantLayout& L) {
  py::dict d;
  d["group_size"] = L.group_size;
  d["groups_per_row"] = L.groups_per_row;
  d["data_bytes_per_row"] = L.data_bytes_per_row;
  d["scales_per_row"] = L.scales_per_row;
  d["zero_point_bytes_per_row"] = L.zero_point_bytes_per_row;
  d["tensor_scale"] = L.tensor_scale;
  return d;
}

void py_quantize(py::handle src, const std::string& format, int64_t group_size, bool symmetric, py::handle data,
                 py::handle scales, py::handle zero_points, const std::string& isa) {
  const QuantSpec spec = make_spec(format, group_size, symmetric);
  TensorArg w = tensor_arg(src, "weight");
  expect_cpu(w);
  bindings::expect_ndim(w, 2, "[out_features, in_features]");
  const DType dtype = w.float_dtype();
  const int64_t rows = w.shape[0], K = w.shape[1];
  if (rows == 0 || K == 0) throw py::value_error("weight is empty, shape " + w.shape_str() + "; nothing to quantize");
  const QuantLayout L = quant_layout(spec, K);
  StorageArgs s = storage_args(spec, L, rows, data, scales, zero_points, true, py::none());
  expect_cpu(s.data);
  const CpuIsa cpu_isa = cpu_isa_from_name(isa);
  int64_t bad;
  {
    py::gil_scoped_release release;
    bad = find_non_finite(w.data, dtype, rows * K);
    if (bad < 0)
      quantize(spec, w.data, dtype, rows, K,
               {static_cast<uint8_t*>(s.data.data), static_cast<float*>(s.scales.data),
                static_cast<uint8_t*>(s.zero_points.data)},
               cpu_isa);
  }
  if (bad >= 0)
    throw py::value_error("weight contains NaN or Inf at [" + std::to_string(bad / K) + ", " + std::to_string(bad % K) +
                          "]; quantization needs finite weights");
}

void py_dequantize(const std::string& format, int64_t group_size, bool symmetric, py::handle data, py::handle scales,
                   py::handle zero_points, py::handle dst, const std::string& isa, py::object cuda_stream) {
  const QuantSpec spec = make_spec(format, group_size, symmetric);
  TensorArg out = tensor_arg(dst, "dst", cuda_stream);
  bindings::expect_ndim(out, 2, "[out_features, in_features]");
  bindings::expect_writeable(out);
  const DType dtype = out.float_dtype();
  const int64_t rows = out.shape[0], K = out.shape[1];
  if (K == 0) throw py::value_error("dst has no columns, shape " + out.shape_str());
  const QuantLayout L = quant_layout(spec, K);
  StorageArgs s = storage_args(spec, L, rows, data, scales, zero_points, false, cuda_stream);
  bindings::expect_same_device(s.data, out);
  const ConstQuantStorage storage{static_cast<const uint8_t*>(s.data.data), static_cast<const float*>(s.scales.data),
                                  static_cast<const uint8_t*>(s.zero_points.data)};
  if (out.cuda) {
    void* stream = cuda_stream.is_none() ? nullptr : reinterpret_cast<void*>(cuda_stream.cast<intptr_t>());
    py::gil_scoped_release release;
    cuda::dequantize(spec, storage, rows, K, out.data, dtype, stream);
    return;
  }
  const CpuIsa cpu_isa = cpu_isa_from_name(isa);
  py::gil_scoped_release release;
  dequantize(spec, storage, rows, K, out.data, dtype, cpu_isa);
}

int64_t py_find_non_finite(py::handle src) {
  TensorArg t = tensor_arg(src, "src");
  expect_cpu(t);
  const DType dtype = t.float_dtype();
  py::gil_scoped_release release;
  return find_non_finite(t.data, dtype, t.numel());
}

float py_double_quantize_scales(py::handle src, py::handle codes, py::handle block_scales) {
  TensorArg a = tensor_arg(src, "scales"), c = tensor_arg(codes, "codes"), b = tensor_arg(block_scales, "block_scales");
  for (const TensorArg* t : {&a, &c, &b}) expect_cpu(*t);
  bindings::expect_type(a, {ElemType::kF32});
  bindings::expect_type(c, {ElemType::kI8});
  bindings::expect_type(b, {ElemType::kF32});
  const int64_t n = a.numel();
  bindings::expect_numel(c, n, "one code per scale");
  bindings::expect_numel(b, ceil_div(n, kNF4DoubleQuantBlock), "one per block of 256 scales");
  bindings::expect_writeable(c);
  bindings::expect_writeable(b);
  float offset = 0.0f;
  double_quantize_scales(static_cast<const float*>(a.data), n, static_cast<int8_t*>(c.data),
                         static_cast<float*>(b.data), &offset);
  return offset;
}

void py_double_dequantize_scales(py::handle codes, py::handle block_scales, float offset, py::handle dst) {
  TensorArg c = tensor_arg(codes, "codes"), b = tensor_arg(block_scales, "block_scales"), d = tensor_arg(dst, "dst");
  for (const TensorArg* t : {&c, &b, &d}) expect_cpu(*t);
  bindings::expect_type(c, {ElemType::kI8});
  bindings::expect_type(b, {ElemType::kF32});
  bindings::expect_type(d, {ElemType::kF32});
  const int64_t n = c.numel();
  bindings::expect_numel(d, n, "one scale per code");
  bindings::expect_numel(b, ceil_div(n, kNF4DoubleQuantBlock), "one per block of 256 scales");
  bindings::expect_writeable(d);
  double_dequantize_scales(static_cast<const int8_t*>(c.data), static_cast<const float*>(b.data), offset, n,
                           static_cast<float*>(d.data));
}

}  // namespace

void register_quant(py::module_& m) {
  m.def(
      "quant_layout",
      [](const std::string& format, int64_t K, int64_t group_size, bool symmetric) {
        return layout_dict(quant_layout(make_spec(format, group_size, symmetric), K));
      },
      py::arg("format"), py::arg("K"), py::arg("group_size") = 0, py::arg("symmetric") = true);
  m.def("quantize", &py_quantize, py::arg("weight"), py::arg("format"), py::arg("group_size"), py::arg("symmetric"),
        py::arg("data"), py::arg("scales").none(true), py::arg("zero_points").none(true), py::arg("isa") = "auto");
  m.def("dequantize", &py_dequantize, py::arg("format"), py::arg("group_size"), py::arg("symmetric"), py::arg("data"),
        py::arg("scales").none(true), py::arg("zero_points").none(true), py::arg("dst"), py::arg("isa") = "auto",
        py::arg("cuda_stream") = py::none());
  m.def("find_non_finite", &py_find_non_finite, py::arg("src"));
  m.def("double_quantize_scales", &py_double_quantize_scales, py::arg("scales"), py::arg("codes"),
        py::arg("block_scales"));
  m.def("double_dequantize_scales", &py_double_dequantize_scales, py::arg("codes"), py::arg("block_scales"),
        py::arg("offset"), py::arg("dst"));
  m.attr("NF4_CODEBOOK") = std::vector<float>(kNF4Codebook, kNF4Codebook + 16);
  m.attr("NF4_DOUBLE_QUANT_BLOCK") = kNF4DoubleQuantBlock;
}

}  // namespace slmops::bindings
