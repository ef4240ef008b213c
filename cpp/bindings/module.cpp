// slmops._C: the pybind11 module. Decodes and validates arguments, releases the GIL and
// calls layer 0. Outputs are allocated by the caller (python/slmops/ops), in the caller's
// framework, and passed in.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "common/checked_int.h"
#include "slmops/build_info.h"
#include "slmops/cpu_features.h"
#include "slmops/cuda.h"
#include "slmops/gemm.h"
#include "slmops/gptq.h"
#include "slmops/kd_loss.h"
#include "slmops/qmatmul.h"
#include "slmops/quant.h"
#include "slmops/spmm.h"
#include "slmops/threading.h"
#include "tensor_arg.h"

namespace py = pybind11;
using namespace slmops;
using bindings::ElemType;
using bindings::TensorArg;
using bindings::tensor_arg;

namespace {

QuantSpec make_spec(const std::string& format, int64_t group_size, bool symmetric) {
  if (group_size < 0) throw py::value_error("group_size must be >= 0, got " + std::to_string(group_size));
  return QuantSpec{quant_format_from_name(format), group_size, symmetric};
}

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

// The storage buffers of one quantized tensor, checked against the layout for [rows, K].
struct StorageArgs {
  TensorArg data, scales, zero_points;
  bool has_scales = false, has_zero_points = false;
};

StorageArgs storage_args(const QuantSpec& spec, const QuantLayout& L, int64_t rows, py::handle data, py::handle scales,
                         py::handle zero_points, bool writing, py::object stream) {
  StorageArgs s;
  s.data = tensor_arg(data, "data", stream);
  bindings::expect_type(s.data, spec.format == QuantFormat::kInt8 ? std::initializer_list<ElemType>{ElemType::kI8, ElemType::kU8}
                                                                  : std::initializer_list<ElemType>{ElemType::kU8});
  if (rows < 0) throw py::value_error("rows must be >= 0, got " + std::to_string(rows));
  bindings::expect_numel(s.data, checked_mul(rows, L.data_bytes_per_row, "rows * data bytes per row"),
                         "rows * data bytes per row");
  const int64_t n_scales = L.tensor_scale ? 1 : checked_mul(rows, L.scales_per_row, "rows * scales per row");
  if (n_scales > 0) {
    s.scales = tensor_arg(scales, "scales", stream);
    bindings::expect_type(s.scales, {ElemType::kF32});
    bindings::expect_numel(s.scales, n_scales, L.tensor_scale ? "one scale for the tensor" : "rows * groups per row");
    bindings::expect_same_device(s.data, s.scales);
    s.has_scales = true;
  }
  const int64_t n_zp = checked_mul(rows, L.zero_point_bytes_per_row, "rows * zero point bytes per row");
  if (n_zp > 0) {
    s.zero_points = tensor_arg(zero_points, "zero_points", stream);
    bindings::expect_type(s.zero_points, {ElemType::kU8});
    bindings::expect_numel(s.zero_points, n_zp, "rows * ceil(groups / 2) packed 4-bit zero points");
    bindings::expect_same_device(s.data, s.zero_points);
    s.has_zero_points = true;
  }
  if (writing) {
    bindings::expect_writeable(s.data);
    if (s.has_scales) bindings::expect_writeable(s.scales);
    if (s.has_zero_points) bindings::expect_writeable(s.zero_points);
  }
  return s;
}

void expect_cpu(const TensorArg& t) {
  if (t.cuda) throw py::value_error(t.name + " is a CUDA tensor; this operation runs on the CPU only");
}

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
void* stream_ptr(const py::object& stream) { return reinterpret_cast<void*>(stream.cast<intptr_t>()); }

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

QMatmulActivation qmatmul_activation(const std::string& activation) {
  if (activation == "float") return QMatmulActivation::kFloat;
  if (activation == "int8") return QMatmulActivation::kInt8;
  if (activation == "int8_row") return QMatmulActivation::kInt8Row;
  throw py::value_error("activation must be 'float', 'int8' or 'int8_row', got '" + activation + "'");
}

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

Borrowed borrow(py::handle obj, const TensorArg& t) {
  Borrowed b{t.owner, t.copied || !t.data ? py::none() : py::reinterpret_borrow<py::object>(obj), t.name, t.data,
             t.data ? t.numel() : 0};
  return b;
}

void check_borrowed(const Borrowed& b) {
  if (b.source.is_none()) return;
  const TensorArg now = tensor_arg(b.source, b.name.c_str());
  if (now.data != b.data || now.numel() != b.numel)
    throw py::value_error(b.name + " was resized or reallocated after the weight was packed, and the packing reads "
                          "its old memory; pack it again (build a new QuantizedTensor / SparseTensor from the new "
                          "buffers)");
}

// A packed weight and the Python arrays it borrows from, kept alive together.
struct PyPackedWeight {
  PackedWeight w;
  Borrowed data, scales, zero_points;
  void check() const {
    for (const Borrowed* b : {&data, &scales, &zero_points}) check_borrowed(*b);
  }
};

std::unique_ptr<PyPackedWeight> py_pack_weight(const std::string& format, int64_t group_size, bool symmetric,
                                               py::handle data, py::handle scales, py::handle zero_points,
                                               int64_t N, int64_t K) {
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
    throw py::value_error("x has " + std::to_string(xa.shape[1]) + " features, the weight expects in_features = " +
                          std::to_string(w.K));
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
  const QMatmulActivation act = qmatmul_activation(activation);
  QMatmulBackend be;
  if (backend == "auto") be = QMatmulBackend::kAuto;
  else if (backend == "kernels") be = QMatmulBackend::kKernels;
  else if (backend == "onednn") be = QMatmulBackend::kOneDnn;
  else throw py::value_error("backend must be 'auto', 'kernels' or 'onednn', got '" + backend + "'");
  const CpuIsa cpu_isa = cpu_isa_from_name(isa);
  py::gil_scoped_release release;
  qmatmul(w, xa.data, x_dtype, M, bias_ptr, ya.data, y_dtype, act, cpu_isa, be);
}

// The quantized matmul on the GPU: the QuantizedTensor's buffers as they are (no packing).
void py_cuda_qmatmul(const std::string& format, int64_t group_size, bool symmetric, py::handle data,
                     py::handle scales, py::handle zero_points, int64_t N, int64_t K, py::handle x, py::handle bias,
                     py::handle y, const std::string& activation, const std::string& path, py::object cuda_stream) {
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
  const QMatmulActivation act = qmatmul_activation(activation);
  cuda::CudaQMatmulPath p;
  if (path == "auto") p = cuda::CudaQMatmulPath::kAuto;
  else if (path == "gemv") p = cuda::CudaQMatmulPath::kGemv;
  else if (path == "tensor_core") p = cuda::CudaQMatmulPath::kTensorCore;
  else if (path == "dequantize_gemm") p = cuda::CudaQMatmulPath::kDequantizeGemm;
  else throw py::value_error("CUDA backend must be 'auto', 'gemv', 'tensor_core' or 'dequantize_gemm', got '" + path + "'");
  const ConstQuantStorage storage{static_cast<const uint8_t*>(s.data.data), static_cast<const float*>(s.scales.data),
                                  static_cast<const uint8_t*>(s.zero_points.data)};
  const DType dtype = xa.float_dtype();
  void* stream = stream_ptr(cuda_stream);
  run_released([&] { cuda::qmatmul(spec, storage, N, K, xa.data, dtype, M, bias_ptr, ya.data, act, p, stream); });
}

// Sparse weights and the Python arrays they borrow from, kept alive together.
struct PyNMWeight {
  NMSparseWeight w;
  Borrowed values, scales, indices;  // zero points are read once, into w.offsets
  void check() const {
    for (const Borrowed* b : {&values, &scales, &indices}) check_borrowed(*b);
  }
};
// CSR indices are copied, not borrowed: the kernels index x and the values through them,
// so a later in-place write to the caller's row_ptr or cols must not reach them unchecked.
struct PyCsrWeight {
  CsrWeight w;
  std::vector<int64_t> row_ptr;
  std::vector<uint8_t> cols;
  Borrowed values;
  void check() const { check_borrowed(values); }
};

const void* cpu_array(TensorArg& t, std::initializer_list<ElemType> types, int64_t numel, const char* what) {
  expect_cpu(t);
  bindings::expect_type(t, types);
  bindings::expect_numel(t, numel, what);
  return t.data;
}

std::unique_ptr<PyNMWeight> py_pack_nm(int n, int m, int64_t N, int64_t K, const std::string& value_type,
                                       py::handle values, py::handle scales, py::handle zero_points, int64_t group,
                                       py::handle indices) {
  SparseValueType type;
  if (value_type == "float32") type = SparseValueType::kF32;
  else if (value_type == "bfloat16") type = SparseValueType::kBF16;
  else if (value_type == "int8") type = SparseValueType::kInt8;
  else if (value_type == "int4") type = SparseValueType::kInt4;
  else throw py::value_error("values must be 'float32', 'bfloat16', 'int8' or 'int4', got '" + value_type + "'");
  const NMSparseWeight shape = nm_layout(N, K, n, m, type, group);  // validated: the sizes below fit
  auto out = std::make_unique<PyNMWeight>();
  TensorArg va = tensor_arg(values, "values"), ia = tensor_arg(indices, "indices"), sa, za;
  const int64_t groups = shape.groups();
  const int64_t value_count = checked_mul(N, type == SparseValueType::kInt4 ? shape.int4_row_bytes() : shape.kept(),
                                          "rows * value bytes per row");
  const void* v = cpu_array(va,
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
    throw py::value_error("x has " + std::to_string(xa.shape[1]) + " features, the weight expects in_features = " +
                          std::to_string(w.K));
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
  sgemm(false, true, M, N, K, 1.0f, static_cast<const float*>(xa.data), K, static_cast<const float*>(wa.data), K,
        0.0f, static_cast<float*>(ya.data), N);
}

py::dict py_build_info() {
  const BuildInfo b = build_info();
  py::dict d;
  d["version"] = b.version;
  d["compiler"] = b.compiler;
  d["openmp"] = b.openmp;
  d["num_threads"] = b.num_threads;
  d["cpu_isa_detected"] = b.cpu_isa_detected;
  d["cpu_isa"] = b.cpu_isa_active;
  d["cpu_isas_compiled"] = b.cpu_isas_compiled;
  d["onednn"] = b.onednn;
  d["onednn_version"] = b.onednn ? py::object(py::str(b.onednn_version)) : py::object(py::none());
  d["cuda"] = b.cuda;
  d["cuda_architectures"] = b.cuda ? py::object(py::str(b.cuda_architectures)) : py::object(py::none());
  d["cuda_devices"] = b.cuda_devices;
  return d;
}

// ---- GPTQ ------------------------------------------------------------------------------
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
                      py::handle scales, py::handle zeros, py::handle codes, int64_t block, bool reference,
                      bool mse) {
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


// ---- distillation losses -----------------------------------------------------------------
KdOptions kd_options(const std::string& divergence, float temperature, float beta, bool scale_t2, float hard_weight,
                     int64_t ignore_index) {
  KdOptions o;
  if (divergence == "forward_kl")
    o.divergence = Divergence::kForwardKl;
  else if (divergence == "reverse_kl")
    o.divergence = Divergence::kReverseKl;
  else if (divergence == "jsd")
    o.divergence = Divergence::kJsd;
  else
    throw py::value_error("divergence must be 'forward_kl', 'reverse_kl' or 'jsd', got '" + divergence + "'");
  o.temperature = temperature;
  o.beta = beta;
  o.scale_t2 = scale_t2;
  o.hard_weight = hard_weight;
  o.ignore_index = ignore_index;
  return o;
}

// An array argument of `type` with `rows` rows (dimension 0) and, if cols >= 0, that many
// columns; None gives an empty TensorArg. On the CPU when `stream` is None, else on the GPU.
TensorArg kd_arg(py::handle obj, const char* name, std::initializer_list<ElemType> types, int ndim, int64_t rows,
                 int64_t cols, bool writing, py::object stream = py::none()) {
  if (obj.is_none()) return TensorArg{};
  TensorArg t = tensor_arg(obj, name, stream);
  if (stream.is_none())
    expect_cpu(t);
  else if (!t.cuda)
    throw py::value_error(t.name + " is on the CPU; the other distillation inputs are on a CUDA device");
  bindings::expect_type(t, types);
  bindings::expect_ndim(t, ndim, ndim == 1 ? "[rows]" : "[rows, columns]");
  if ((rows >= 0 && t.shape[0] != rows) || (ndim == 2 && cols >= 0 && t.shape[1] != cols))
    throw py::value_error(t.name + " has shape " + t.shape_str() + ", expected " + std::to_string(rows) + " rows" +
                          (ndim == 2 && cols >= 0 ? " and " + std::to_string(cols) + " columns" : ""));
  if (writing) bindings::expect_writeable(t);
  return t;
}

struct KdTeacherArgs {
  TensorArg logits, ids, logprobs, hidden, head;
  KdTeacher teacher;
};

KdTeacherArgs kd_teacher(int64_t rows, py::handle logits, py::handle ids, py::handle logprobs, py::handle hidden,
                         py::handle head, py::object stream = py::none(),
                         std::initializer_list<ElemType> hidden_types = {ElemType::kF32}) {
  KdTeacherArgs a;
  const auto floats = {ElemType::kF32, ElemType::kF16, ElemType::kBF16};
  a.logits = kd_arg(logits, "teacher_logits", floats, 2, rows, -1, false, stream);
  a.ids = kd_arg(ids, "topk_ids", {ElemType::kI64}, 2, rows, -1, false, stream);
  a.logprobs =
      kd_arg(logprobs, "topk_logprobs", {ElemType::kF32}, 2, rows, a.ids.data ? a.ids.shape[1] : -1, false, stream);
  a.hidden = kd_arg(hidden, "teacher_hidden", hidden_types, 2, rows, -1, false, stream);
  a.head = kd_arg(head, "teacher_head", hidden_types, 2, -1, a.hidden.data ? a.hidden.shape[1] : -1, false, stream);
  KdTeacher& t = a.teacher;
  if (a.logits.data) {
    t.logits = a.logits.data;
    t.dtype = a.logits.float_dtype();
    t.vocab = a.logits.shape[1];
  }
  if (a.ids.data) {
    if (!a.logprobs.data) throw py::value_error("topk_ids needs topk_logprobs");
    t.topk_ids = static_cast<const int64_t*>(a.ids.data);
    t.topk_logprobs = static_cast<const float*>(a.logprobs.data);
    t.k = a.ids.shape[1];
  }
  if (a.hidden.data) {
    if (!a.head.data) throw py::value_error("teacher_hidden needs teacher_head");
    if (a.hidden.type != ElemType::kF32) return a;  // CUDA: read through cuda_teacher
    t.hidden = static_cast<const float*>(a.hidden.data);
    t.head = static_cast<const float*>(a.head.data);
    t.hidden_size = a.hidden.shape[1];
    t.vocab = a.head.shape[0];
  }
  return a;
}

// The GPU form of a teacher: logits or hidden + head in the student's dtype; top-k is a CPU feature.
cuda::CudaKdTeacher cuda_teacher(const KdTeacherArgs& a, ElemType student_type) {
  if (a.ids.data) throw py::value_error("top-k teachers run on the CPU; pass teacher logits or hidden states on CUDA");
  cuda::CudaKdTeacher t;
  if (a.logits.data) {
    if (a.logits.type != student_type)
      throw py::type_error("teacher_logits must have the student's dtype on CUDA, got " +
                           std::string(bindings::elem_type_name(a.logits.type)));
    t.logits = a.logits.data;
    t.vocab = a.logits.shape[1];
  }
  if (a.hidden.data) {
    if (a.hidden.type != student_type || a.head.type != student_type)
      throw py::type_error("teacher_hidden and teacher_head must have the student's dtype on CUDA");
    t.hidden = a.hidden.data;
    t.head = a.head.data;
    t.hidden_size = a.hidden.shape[1];
    t.vocab = a.head.shape[0];
  }
  return t;
}


void py_kd_loss(py::handle student, py::handle loss_rows, py::handle grad, py::handle teacher_logits,
                py::handle topk_ids, py::handle topk_logprobs, py::handle labels, const std::string& divergence,
                float temperature, float beta, bool scale_t2, float hard_weight, int64_t ignore_index,
                float grad_scale, const std::string& isa, py::object cuda_stream) {
  const KdOptions o = kd_options(divergence, temperature, beta, scale_t2, hard_weight, ignore_index);
  const py::object& st = cuda_stream;
  TensorArg z =
      kd_arg(student, "student_logits", {ElemType::kF32, ElemType::kF16, ElemType::kBF16}, 2, -1, -1, false, st);
  const int64_t rows = z.shape[0], V = z.shape[1];
  TensorArg loss = kd_arg(loss_rows, "loss_rows", {ElemType::kF32}, 1, rows, -1, true, st);
  TensorArg g = kd_arg(grad, "grad", {z.type}, 2, rows, V, true, st);
  TensorArg y = kd_arg(labels, "labels", {ElemType::kI64}, 1, rows, -1, false, st);
  KdTeacherArgs t = kd_teacher(rows, teacher_logits, topk_ids, topk_logprobs, py::none(), py::none(), st);
  if (!st.is_none()) {
    const cuda::CudaKdTeacher ct = cuda_teacher(t, z.type);
    run_released([&] {
      cuda::kd_loss_fwd_bwd(o, z.data, z.float_dtype(), rows, V, ct, static_cast<const int64_t*>(y.data), grad_scale,
                            static_cast<float*>(loss.data), g.data, stream_ptr(st));
    });
    return;
  }
  const CpuIsa cpu_isa = cpu_isa_from_name(isa);
  run_released([&] {
    kd_loss_fwd_bwd(o, z.data, z.float_dtype(), rows, V, t.teacher, static_cast<const int64_t*>(y.data), grad_scale,
                    static_cast<float*>(loss.data), g.data, cpu_isa);
  });
}

void py_fused_linear_kd_loss(py::handle hidden, py::handle weight, py::handle loss_rows, py::handle d_hidden,
                             py::handle d_weight, py::handle teacher_logits, py::handle topk_ids,
                             py::handle topk_logprobs, py::handle teacher_hidden, py::handle teacher_head,
                             py::handle labels, const std::string& divergence, float temperature, float beta,
                             bool scale_t2, float hard_weight, int64_t ignore_index, float grad_scale,
                             int64_t chunk_rows, const std::string& isa, py::object cuda_stream) {
  const KdOptions o = kd_options(divergence, temperature, beta, scale_t2, hard_weight, ignore_index);
  const py::object& st = cuda_stream;
  // On CUDA the hidden states and heads keep their dtype (the GEMMs run in it); the CPU
  // kernels take float32.
  const bool gpu = !st.is_none();
  TensorArg x = gpu ? kd_arg(hidden, "student_hidden", {ElemType::kF32, ElemType::kF16, ElemType::kBF16}, 2, -1, -1,
                             false, st)
                    : kd_arg(hidden, "student_hidden", {ElemType::kF32}, 2, -1, -1, false, st);
  const int64_t rows = x.shape[0], H = x.shape[1];
  TensorArg w = kd_arg(weight, "student_head_weight", {x.type}, 2, -1, H, false, st);
  const int64_t V = w.shape[0];
  TensorArg loss = kd_arg(loss_rows, "loss_rows", {ElemType::kF32}, 1, rows, -1, true, st);
  TensorArg dx = kd_arg(d_hidden, "d_hidden", {ElemType::kF32}, 2, rows, H, true, st);
  TensorArg dw = kd_arg(d_weight, "d_weight", {ElemType::kF32}, 2, V, H, true, st);
  TensorArg y = kd_arg(labels, "labels", {ElemType::kI64}, 1, rows, -1, false, st);
  KdTeacherArgs t = kd_teacher(rows, teacher_logits, topk_ids, topk_logprobs, teacher_hidden, teacher_head, st,
                               {gpu ? x.type : ElemType::kF32});
  if (chunk_rows < 0) throw py::value_error("chunk_rows must be >= 0 (0: automatic)");
  if (gpu) {
    const cuda::CudaKdTeacher ct = cuda_teacher(t, x.type);
    run_released([&] {
      cuda::fused_linear_kd_loss(o, x.data, w.data, x.float_dtype(), rows, H, V, ct,
                                 static_cast<const int64_t*>(y.data), grad_scale, static_cast<float*>(loss.data),
                                 static_cast<float*>(dx.data), static_cast<float*>(dw.data), chunk_rows,
                                 stream_ptr(st));
    });
    return;
  }
  const CpuIsa cpu_isa = cpu_isa_from_name(isa);
  run_released([&] {
    fused_linear_kd_loss(o, static_cast<const float*>(x.data), static_cast<const float*>(w.data), rows, H, V,
                         t.teacher, static_cast<const int64_t*>(y.data), grad_scale, static_cast<float*>(loss.data),
                         static_cast<float*>(dx.data), static_cast<float*>(dw.data), chunk_rows, cpu_isa);
  });
}

}  // namespace


PYBIND11_MODULE(_C, m, py::mod_gil_not_used()) {
  m.doc() = "slmops C++ kernels (layer 1 bindings). Use the slmops package, not this module, directly.";

  m.def("build_info", &py_build_info);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("available_cpu_isas", [] {
    std::vector<std::string> out;
    for (CpuIsa i : available_cpu_isas()) out.push_back(cpu_isa_name(i));
    return out;
  });

  m.def("quant_formats", [] {
    py::list out;
    for (int i = 0; i < kNumQuantFormats; ++i) {
      const QuantFormatInfo& f = quant_format_info(static_cast<QuantFormat>(i));
      py::dict d;
      d["name"] = f.name;
      d["bits"] = f.bits;
      d["block_size"] = f.block_size;
      d["block_bytes"] = f.block_bytes;
      d["has_group_size"] = f.has_group_size;
      d["has_symmetric_option"] = f.has_symmetric_option;
      d["default_group_size"] = f.default_group_size;
      out.append(d);
    }
    return out;
  });
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
  m.def("double_quantize_scales", &py_double_quantize_scales, py::arg("scales"), py::arg("codes"),
        py::arg("block_scales"));
  m.def("double_dequantize_scales", &py_double_dequantize_scales, py::arg("codes"), py::arg("block_scales"),
        py::arg("offset"), py::arg("dst"));
  py::class_<PyPackedWeight>(m, "PackedWeight", "A quantized weight packed for the qmatmul kernels.")
      .def_property_readonly("shape", [](const PyPackedWeight& p) { return py::make_tuple(p.w.N, p.w.K); })
      .def_property_readonly("kind", [](const PyPackedWeight& p) {
        static const char* names[] = {"nibble_affine", "nibble_table", "int8", "ternary", "dequantize"};
        return std::string(names[int(p.w.kind)]);
      })
      .def_property_readonly("nbytes", [](const PyPackedWeight& p) {
        return p.w.owned_codes.size() + 4 * (p.w.owned_scales.size() + p.w.owned_offsets.size());
      });
  m.def("pack_weight", &py_pack_weight, py::arg("format"), py::arg("group_size"), py::arg("symmetric"),
        py::arg("data"), py::arg("scales").none(true), py::arg("zero_points").none(true), py::arg("N"), py::arg("K"));
  m.def("cuda_qmatmul", &py_cuda_qmatmul, py::arg("format"), py::arg("group_size"), py::arg("symmetric"),
        py::arg("data"), py::arg("scales").none(true), py::arg("zero_points").none(true), py::arg("N"), py::arg("K"),
        py::arg("x"), py::arg("bias").none(true), py::arg("y"), py::arg("activation"), py::arg("path"),
        py::arg("cuda_stream"));
  m.def("qmatmul", &py_qmatmul, py::arg("packed"), py::arg("x"), py::arg("bias").none(true), py::arg("y"),
        py::arg("activation") = "float", py::arg("isa") = "auto", py::arg("backend") = "auto");
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
        if (activation != "float" && activation != "int8")
          throw py::value_error("activation must be 'float' or 'int8', got '" + activation + "'");
        const SpmmActivation act = activation == "int8" ? SpmmActivation::kInt8 : SpmmActivation::kFloat;
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
  m.def(
      "read_bandwidth",
      [](int64_t bytes, int repeats) {
        py::gil_scoped_release release;
        return measure_read_bandwidth(bytes, repeats);
      },
      py::arg("bytes") = int64_t(512) << 20, py::arg("repeats") = 5,
      "Read bandwidth in GB/s: the best of `repeats` parallel sums over a buffer of `bytes`.");
  m.def("kd_loss", &py_kd_loss, py::arg("student"), py::arg("loss_rows"), py::arg("grad").none(true) = py::none(),
        py::arg("teacher_logits").none(true) = py::none(), py::arg("topk_ids").none(true) = py::none(), py::arg("topk_logprobs").none(true) = py::none(),
        py::arg("labels").none(true) = py::none(), py::arg("divergence"), py::arg("temperature"), py::arg("beta"),
        py::arg("scale_t2"), py::arg("hard_weight"), py::arg("ignore_index"), py::arg("grad_scale"),
        py::arg("isa") = "auto", py::arg("cuda_stream") = py::none());
  m.def("fused_linear_kd_loss", &py_fused_linear_kd_loss, py::arg("hidden"), py::arg("weight"), py::arg("loss_rows"),
        py::arg("d_hidden").none(true) = py::none(), py::arg("d_weight").none(true) = py::none(), py::arg("teacher_logits").none(true) = py::none(),
        py::arg("topk_ids").none(true) = py::none(), py::arg("topk_logprobs").none(true) = py::none(), py::arg("teacher_hidden").none(true) = py::none(),
        py::arg("teacher_head").none(true) = py::none(), py::arg("labels").none(true) = py::none(), py::arg("divergence"),
        py::arg("temperature"), py::arg("beta"), py::arg("scale_t2"), py::arg("hard_weight"), py::arg("ignore_index"),
        py::arg("grad_scale"), py::arg("chunk_rows") = 0, py::arg("isa") = "auto",
        py::arg("cuda_stream") = py::none());
  m.def("fused_kd_chunk_rows", &fused_kd_chunk_rows, py::arg("rows"), py::arg("vocab"));
  m.attr("NF4_CODEBOOK") = std::vector<float>(kNF4Codebook, kNF4Codebook + 16);
  m.attr("NF4_DOUBLE_QUANT_BLOCK") = kNF4DoubleQuantBlock;
}
