// slmops._C: quantized weights packed for the CPU kernels, the quantized matmul on the
// CPU and on CUDA (the QuantizedTensor's buffers as they are), and the read-bandwidth probe.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "common.h"
#include "packs.h"
#include "slmops/cpu_features.h"
#include "slmops/cuda.h"
#include "slmops/qmatmul.h"
#include "slmops/quant.h"

namespace slmops::bindings {
namespace {

constexpr Choice<QMatmulActivation> kActivations[] = {
    {"float", QMatmulActivation::kFloat},
    {"int8", QMatmulActivation::kInt8},
    {"int8_row", QMatmulActivation::kInt8Row},
};
constexpr Choice<QMatmulBackend> kBackends[] = {
    {"auto", QMatmulBackend::kAuto},
    {"kernels", QMatmulBackend::kKernels},
    {"onednn", QMatmulBackend::kOneDnn},
};
constexpr Choice<cuda::CudaQMatmulPath> kCudaBackends[] = {
    {"auto", cuda::CudaQMatmulPath::kAuto},
    {"gemv", cuda::CudaQMatmulPath::kGemv},
    {"tensor_core", cuda::CudaQMatmulPath::kTensorCore},
    {"dequantize_gemm", cuda::CudaQMatmulPath::kDequantizeGemm},
};

std::unique_ptr<PyPackedWeight> py_pack_weight(const std::string& format, int64_t group_size, bool symmetric,
                                               py::handle data, py::handle scales, py::handle zero_points, int64_t N,
                                               int64_t K) {
  const QuantSpec spec = make_spec(format, group_size, symmetric);
  if (N <= 0 || K <= 0)
    throw py::value_error("shape must be positive, got (" + std::to_string(N) + ", " + std::to_string(K) + ")");
  const QuantLayout L = quant_layout(spec, K);
  StorageArgs s = storage_args(spec, L, N, data, scales, zero_points, false, py::none());
  expect_cpu(s.data);
  auto out = std::make_unique<PyPackedWeight>();
  out->data = borrow(data, s.data);
  out->scales = borrow(scales, s.scales);
  out->zero_points = borrow(zero_points, s.zero_points);
  const ConstQuantStorage storage{static_cast<const uint8_t*>(s.data.data), static_cast<const float*>(s.scales.data),
                                  static_cast<const uint8_t*>(s.zero_points.data)};
  py::gil_scoped_release release;
  out->w = pack_weight(spec, storage, N, K);
  return out;
}

void py_qmatmul(const PyPackedWeight& pw, py::handle x, py::handle bias, py::handle y, const std::string& activation,
                const std::string& isa, const std::string& backend) {
  pw.check();
  const PackedWeight& w = pw.w;
  TensorArg xa = tensor_arg(x, "x");
  expect_cpu(xa);
  bindings::expect_ndim(xa, 2, "[M, in_features]");
  if (xa.shape[1] != w.K)
    throw py::value_error("x has " + std::to_string(xa.shape[1]) +
                          " features, the weight expects in_features = " + std::to_string(w.K));
  const DType x_dtype = xa.float_dtype();
  const int64_t M = xa.shape[0];
  TensorArg ya = tensor_arg(y, "y");
  expect_cpu(ya);
  bindings::expect_ndim(ya, 2, "[M, out_features]");
  bindings::expect_writeable(ya);
  if (ya.shape[0] != M || ya.shape[1] != w.N)
    throw py::value_error("y must have shape (" + std::to_string(M) + ", " + std::to_string(w.N) + "), got " +
                          ya.shape_str());
  const DType y_dtype = ya.float_dtype();
  const float* bias_ptr = nullptr;
  TensorArg ba;
  if (!bias.is_none()) {
    ba = tensor_arg(bias, "bias");
    expect_cpu(ba);
    bindings::expect_type(ba, {ElemType::kF32});
    bindings::expect_numel(ba, w.N, "out_features");
    bias_ptr = static_cast<const float*>(ba.data);
  }
  const QMatmulActivation act = parse_choice(activation, kActivations, "activation");
  const QMatmulBackend be = parse_choice(backend, kBackends, "backend");
  const CpuIsa cpu_isa = cpu_isa_from_name(isa);
  py::gil_scoped_release release;
  qmatmul(w, xa.data, x_dtype, M, bias_ptr, ya.data, y_dtype, act, cpu_isa, be);
}

std::string packed_kind(const PyPackedWeight& p) {
  static const char* names[] = {"nibble_affine", "nibble_table", "int8", "ternary", "dequantize"};
  return std::string(names[int(p.w.kind)]);
}

size_t packed_nbytes(const PyPackedWeight& p) {
  return p.w.owned_codes.size() + 4 * (p.w.owned_scales.size() + p.w.owned_offsets.size());
}

// The quantized matmul on the GPU: the QuantizedTensor's buffers as they are (no packing).
void py_cuda_qmatmul(const std::string& format, int64_t group_size, bool symmetric, py::handle data, py::handle scales,
                     py::handle zero_points, int64_t N, int64_t K, py::handle x, py::handle bias, py::handle y,
                     const std::string& activation, const std::string& path, py::object cuda_stream) {
  const QuantSpec spec = make_spec(format, group_size, symmetric);
  const QuantLayout L = quant_layout(spec, K);
  StorageArgs s = storage_args(spec, L, N, data, scales, zero_points, false, cuda_stream);
  TensorArg xa = tensor_arg(x, "x", cuda_stream), ya = tensor_arg(y, "y", cuda_stream), ba;
  for (const TensorArg* t : {&s.data, &xa, &ya})
    if (!t->cuda) throw py::value_error(t->name + " must be a CUDA tensor");
  bindings::expect_same_device(s.data, xa);
  bindings::expect_same_device(xa, ya);
  bindings::expect_ndim(xa, 2, "[M, in_features]");
  bindings::expect_ndim(ya, 2, "[M, out_features]");
  bindings::expect_writeable(ya);
  const int64_t M = xa.shape[0];
  if (xa.shape[1] != K || ya.shape[0] != M || ya.shape[1] != N || ya.type != xa.type)
    throw py::value_error("need x [M, " + std::to_string(K) + "] and y [M, " + std::to_string(N) +
                          "] of one dtype, got x " + xa.shape_str() + ", y " + ya.shape_str());
  const float* bias_ptr = nullptr;
  if (!bias.is_none()) {
    ba = tensor_arg(bias, "bias", cuda_stream);
    bindings::expect_same_device(xa, ba);
    bindings::expect_type(ba, {ElemType::kF32});
    bindings::expect_numel(ba, N, "out_features");
    bias_ptr = static_cast<const float*>(ba.data);
  }
  const QMatmulActivation act = parse_choice(activation, kActivations, "activation");
  const cuda::CudaQMatmulPath p = parse_choice(path, kCudaBackends, "CUDA backend");
  const ConstQuantStorage storage{static_cast<const uint8_t*>(s.data.data), static_cast<const float*>(s.scales.data),
                                  static_cast<const uint8_t*>(s.zero_points.data)};
  const DType dtype = xa.float_dtype();
  void* stream = stream_ptr(cuda_stream);
  run_released([&] { cuda::qmatmul(spec, storage, N, K, xa.data, dtype, M, bias_ptr, ya.data, act, p, stream); });
}

}  // namespace

void register_qmatmul(py::module_& m) {
  m.def(
      "qmatmul_activations", [] { return choice_names(kActivations); },
      "The activation modes qmatmul and cuda_qmatmul accept.");
  m.def("qmatmul_backends", [] { return choice_names(kBackends); }, "The CPU backends qmatmul accepts.");
  m.def(
      "cuda_qmatmul_backends", [] { return choice_names(kCudaBackends); },
      "The GPU paths cuda_qmatmul accepts (its `path`; the `backend` of slmops.ops.qmatmul on CUDA).");
  py::class_<PyPackedWeight>(m, "PackedWeight", "A quantized weight packed for the qmatmul kernels.")
      .def_property_readonly("shape", [](const PyPackedWeight& p) { return py::make_tuple(p.w.N, p.w.K); })
      .def_property_readonly("kind", &packed_kind)
      .def_property_readonly("nbytes", &packed_nbytes);
  m.def("pack_weight", &py_pack_weight, py::arg("format"), py::arg("group_size"), py::arg("symmetric"), py::arg("data"),
        py::arg("scales").none(true), py::arg("zero_points").none(true), py::arg("N"), py::arg("K"));
  m.def("cuda_qmatmul", &py_cuda_qmatmul, py::arg("format"), py::arg("group_size"), py::arg("symmetric"),
        py::arg("data"), py::arg("scales").none(true), py::arg("zero_points").none(true), py::arg("N"), py::arg("K"),
        py::arg("x"), py::arg("bias").none(true), py::arg("y"), py::arg("activation"), py::arg("path"),
        py::arg("cuda_stream"));
  m.def("qmatmul", &py_qmatmul, py::arg("packed"), py::arg("x"), py::arg("bias").none(true), py::arg("y"),
        py::arg("activation") = "float", py::arg("isa") = "auto", py::arg("backend") = "auto");
  m.def(
      "read_bandwidth",
      [](int64_t bytes, int repeats) {
        py::gil_scoped_release release;
        return measure_read_bandwidth(bytes, repeats);
      },
      py::arg("bytes") = int64_t(512) << 20, py::arg("repeats") = 5,
      "Read bandwidth in GB/s: the best of `repeats` parallel sums over a buffer of `bytes`.");
}

}  // namespace slmops::bindings
