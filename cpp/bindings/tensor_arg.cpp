#include "tensor_arg.h"

#include <pybind11/numpy.h>

#include <cstring>
#include <sstream>

#include "common/checked_int.h"
#include "dlpack.h"

namespace slmops::bindings {
namespace {

ElemType from_numpy(const py::dtype& dt) {
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'f' && size == 4) return ElemType::kF32;
  if (kind == 'f' && size == 2) return ElemType::kF16;
  if (kind == 'u' && size == 1) return ElemType::kU8;
  if (kind == 'i' && size == 1) return ElemType::kI8;
  if (kind == 'u' && size == 2) return ElemType::kU16;
  if (kind == 'i' && size == 2) return ElemType::kI16;
  if (kind == 'i' && size == 4) return ElemType::kI32;
  if (kind == 'i' && size == 8) return ElemType::kI64;
  return ElemType::kOther;
}

ElemType from_dlpack(const dlpack::DLDataType& dt) {
  if (dt.lanes != 1) return ElemType::kOther;
  if (dt.code == dlpack::kDLFloat && dt.bits == 32) return ElemType::kF32;
  if (dt.code == dlpack::kDLFloat && dt.bits == 16) return ElemType::kF16;
  if (dt.code == dlpack::kDLBfloat && dt.bits == 16) return ElemType::kBF16;
  if (dt.code == dlpack::kDLUInt && dt.bits == 8) return ElemType::kU8;
  if (dt.code == dlpack::kDLInt && dt.bits == 8) return ElemType::kI8;
  if (dt.code == dlpack::kDLUInt && dt.bits == 16) return ElemType::kU16;
  if (dt.code == dlpack::kDLInt && dt.bits == 16) return ElemType::kI16;
  if (dt.code == dlpack::kDLInt && dt.bits == 32) return ElemType::kI32;
  if (dt.code == dlpack::kDLInt && dt.bits == 64) return ElemType::kI64;
  return ElemType::kOther;
}

[[noreturn]] void not_contiguous(const std::string& name) {
  throw py::value_error(name +
                        " must be C-contiguous; call .contiguous() (torch) or np.ascontiguousarray (numpy) first");
}

// Strides (in elements) describe C order, ignoring dimensions of size 1 whose stride
// is meaningless (torch and numpy both produce arbitrary strides there).
bool is_c_contiguous(const std::vector<int64_t>& shape, const int64_t* strides) {
  for (int64_t d : shape)
    if (d == 0) return true;  // no elements: any strides describe the same (empty) memory
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

size_t elem_size(ElemType t) {
  switch (t) {
    case ElemType::kU8:
    case ElemType::kI8: return 1;
    case ElemType::kF16:
    case ElemType::kBF16:
    case ElemType::kU16:
    case ElemType::kI16: return 2;
    case ElemType::kF32:
    case ElemType::kI32: return 4;
    default: return 8;
  }
}

bool misaligned(const void* p, size_t size) { return reinterpret_cast<uintptr_t>(p) % size != 0; }

// A CPU array whose data is not aligned to its element size (np.frombuffer at an odd
// offset, torch.frombuffer): typed loads from it are undefined behaviour, so the kernel
// reads an aligned copy (numpy allocations are at least 16-byte aligned).
void copy_to_aligned(TensorArg& t) {
  const size_t bytes = size_t(t.numel()) * elem_size(t.type);
  py::array_t<uint8_t> copy{py::ssize_t(bytes)};
  if (bytes) std::memcpy(copy.mutable_data(), t.data, bytes);
  t.data = copy.mutable_data();
  t.owner = copy;
  t.copied = true;
}

}  // namespace

const char* elem_type_name(ElemType t) {
  switch (t) {
    case ElemType::kF32: return "float32";
    case ElemType::kF16: return "float16";
    case ElemType::kBF16: return "bfloat16";
    case ElemType::kU8: return "uint8";
    case ElemType::kI8: return "int8";
    case ElemType::kU16: return "uint16";
    case ElemType::kI16: return "int16";
    case ElemType::kI32: return "int32";
    case ElemType::kI64: return "int64";
    default: return "unsupported";
  }
}

int64_t TensorArg::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n = checked_mul(n, d, (name + " element count").c_str());
  return n;
}

std::string TensorArg::shape_str() const {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

DType TensorArg::float_dtype() const {
  switch (type) {
    case ElemType::kF32: return DType::kF32;
    case ElemType::kF16: return DType::kF16;
    case ElemType::kBF16: return DType::kBF16;
    default: throw py::type_error(name + " must be float32, float16 or bfloat16, got " + elem_type_name(type));
  }
}

TensorArg tensor_arg(py::handle obj, const char* name, py::object cuda_stream) {
  TensorArg t;
  t.name = name;
  if (obj.is_none()) throw py::type_error(t.name + " is required, got None");
  if (py::isinstance<py::array>(obj)) {
    // numpy: the buffer protocol handles read-only arrays, which DLPack cannot flag.
    auto arr = py::reinterpret_borrow<py::array>(obj);
    t.type = from_numpy(arr.dtype());
    if (t.type == ElemType::kOther)
      throw py::type_error(t.name + " has unsupported dtype " + std::string(py::str(arr.dtype())));
    t.data = const_cast<void*>(arr.data());
    t.writeable = arr.writeable();
    std::vector<int64_t> strides;
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
      t.shape.push_back(arr.shape(i));
      strides.push_back(arr.strides(i) / arr.itemsize());
      if (arr.strides(i) % arr.itemsize() != 0) not_contiguous(t.name);
    }
    if (!is_c_contiguous(t.shape, strides.data())) not_contiguous(t.name);
    t.owner = py::reinterpret_borrow<py::object>(obj);
    if (!arr.dtype().attr("isnative").cast<bool>()) {
      // '>f4' on a little-endian machine: the values, not the bytes, are what the caller means.
      py::array native = arr.attr("astype")(arr.dtype().attr("newbyteorder")("="));
      t.data = native.mutable_data();
      t.owner = native;
      t.copied = true;
    } else if (misaligned(t.data, elem_size(t.type))) {
      copy_to_aligned(t);
    }
    return t;
  }
  if (!py::hasattr(obj, "__dlpack__"))
    throw py::type_error(t.name + " must be a numpy array or a tensor that supports DLPack (torch.Tensor), got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  // torch refuses to export a tensor that requires grad; the kernels use its memory outside
  // autograd, as the ops layer's .detach() does, so take the detached alias (same memory).
  py::object src = py::reinterpret_borrow<py::object>(obj);
  if (py::hasattr(src, "requires_grad") && py::hasattr(src, "detach")) {
    const py::object rg = src.attr("requires_grad");
    if (py::isinstance<py::bool_>(rg) && rg.cast<bool>()) src = src.attr("detach")();
  }
  py::object capsule;
  try {
    capsule =
        cuda_stream.is_none() ? src.attr("__dlpack__")() : src.attr("__dlpack__")(py::arg("stream") = cuda_stream);
  } catch (py::error_already_set& e) {
    // Other refusals (conjugate or negative bit views, ...) are BufferError: say whose.
    if (!e.matches(PyExc_BufferError)) throw;
    throw py::value_error(t.name + " cannot be passed to the kernels: " + std::string(e.what()));
  }
  // Borrow only: the capsule keeps its name and stays alive in t.owner, so the producer's
  // capsule destructor frees the DLManagedTensor once the call is over (DLPack spec).
  auto* managed = static_cast<dlpack::DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (!managed) {
    PyErr_Clear();
    throw py::type_error(t.name + ": __dlpack__() did not return a 'dltensor' capsule");
  }
  const dlpack::DLTensor& dl = managed->dl_tensor;
  if (dl.device.device_type == dlpack::kDLCUDA || dl.device.device_type == dlpack::kDLCUDAManaged) {
    t.cuda = true;
  } else if (dl.device.device_type != dlpack::kDLCPU && dl.device.device_type != dlpack::kDLCUDAHost) {
    throw py::value_error(t.name + " is on an unsupported device (DLPack device type " +
                          std::to_string(dl.device.device_type) + "); use a CPU or CUDA tensor");
  }
  t.device_id = dl.device.device_id;
  t.type = from_dlpack(dl.dtype);
  if (t.type == ElemType::kOther)
    throw py::type_error(t.name + " has an unsupported dtype (DLPack code " + std::to_string(dl.dtype.code) + ", " +
                         std::to_string(dl.dtype.bits) + " bits)");
  if (dl.ndim < 0 || (dl.ndim > 0 && !dl.shape)) throw py::value_error(t.name + ": malformed DLPack shape");
  t.shape.assign(dl.shape, dl.shape + dl.ndim);
  for (int64_t d : t.shape)
    if (d < 0) throw py::value_error(t.name + " has a negative dimension in its DLPack shape " + t.shape_str());
  t.numel();  // throws if the element count overflows
  if (dl.strides && !is_c_contiguous(t.shape, dl.strides)) not_contiguous(t.name);
  t.data = static_cast<char*>(dl.data) + dl.byte_offset;
  t.owner = capsule;
  if (misaligned(t.data, elem_size(t.type))) {
    if (t.cuda)
      throw py::value_error(t.name + " is a CUDA tensor whose data is not aligned to its element size; pass .clone()");
    copy_to_aligned(t);
  }
  return t;
}

void expect_ndim(const TensorArg& t, int ndim, const char* what) {
  if (int(t.shape.size()) != ndim)
    throw py::value_error(t.name + " must be " + std::to_string(ndim) + "-D " + what + ", got shape " + t.shape_str());
}

void expect_type(const TensorArg& t, std::initializer_list<ElemType> types) {
  std::string names;
  for (ElemType e : types) {
    if (e == t.type) return;
    names += std::string(names.empty() ? "" : " or ") + elem_type_name(e);
  }
  throw py::type_error(t.name + " must be " + names + ", got " + elem_type_name(t.type));
}

void expect_numel(const TensorArg& t, int64_t n, const char* what) {
  if (t.numel() != n)
    throw py::value_error(t.name + " must hold " + std::to_string(n) + " elements (" + what + "), got shape " +
                          t.shape_str());
}

void expect_writeable(const TensorArg& t) {
  if (!t.writeable) throw py::value_error(t.name + " is read-only; pass a writeable output array");
  if (t.copied)
    throw py::value_error(t.name +
                          " is byte-swapped or not aligned to its element size, so it cannot be written in "
                          "place; pass a native, aligned output array (np.empty / torch.empty make one)");
}

void expect_same_device(const TensorArg& a, const TensorArg& b) {
  if (a.cuda != b.cuda || (a.cuda && a.device_id != b.device_id))
    throw py::value_error(a.name + " and " + b.name + " must be on the same device");
}

}  // namespace slmops::bindings
