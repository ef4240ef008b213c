#include "common.h"

#include "common/checked_int.h"

namespace slmops::bindings {

std::string quoted_alternatives(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i) out += i + 1 == names.size() ? " or " : ", ";
    out += "'" + names[i] + "'";
  }
  return out;
}

QuantSpec make_spec(const std::string& format, int64_t group_size, bool symmetric) {
  if (group_size < 0) throw py::value_error("group_size must be >= 0, got " + std::to_string(group_size));
  return QuantSpec{quant_format_from_name(format), group_size, symmetric};
}

StorageArgs storage_args(const QuantSpec& spec, const QuantLayout& L, int64_t rows, py::handle data, py::handle scales,
                         py::handle zero_points, bool writing, py::object stream) {
  StorageArgs s;
  s.data = tensor_arg(data, "data", stream);
  bindings::expect_type(s.data, spec.format == QuantFormat::kInt8
                                    ? std::initializer_list<ElemType>{ElemType::kI8, ElemType::kU8}
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

void* stream_ptr(const py::object& stream) { return reinterpret_cast<void*>(stream.cast<intptr_t>()); }

Borrowed borrow(py::handle obj, const TensorArg& t) {
  Borrowed b{t.owner, t.copied || !t.data ? py::none() : py::reinterpret_borrow<py::object>(obj), t.name, t.data,
             t.data ? t.numel() : 0};
  return b;
}

void check_borrowed(const Borrowed& b) {
  if (b.source.is_none()) return;
  const TensorArg now = tensor_arg(b.source, b.name.c_str());
  if (now.data != b.data || now.numel() != b.numel)
    throw py::value_error(b.name +
                          " was resized or reallocated after the weight was packed, and the packing reads "
                          "its old memory; pack it again (build a new QuantizedTensor / SparseTensor from the new "
                          "buffers)");
}

}  // namespace slmops::bindings
