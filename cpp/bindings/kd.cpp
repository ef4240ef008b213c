// slmops._C: the distillation losses (logits, and fused with the LM head), CPU and CUDA.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "common.h"
#include "slmops/cpu_features.h"
#include "slmops/cuda.h"
#include "slmops/kd_loss.h"

namespace slmops::bindings {
namespace {

constexpr Choice<Divergence> kDivergences[] = {
    {"forward_kl", Divergence::kForwardKl},
    {"reverse_kl", Divergence::kReverseKl},
    {"jsd", Divergence::kJsd},
};

KdOptions kd_options(const std::string& divergence, float temperature, float beta, bool scale_t2, float hard_weight,
                     int64_t ignore_index) {
  KdOptions o;
  o.divergence = parse_choice(divergence, kDivergences, "divergence");
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
                float temperature, float beta, bool scale_t2, float hard_weight, int64_t ignore_index, float grad_scale,
                const std::string& isa, py::object cuda_stream) {
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
  TensorArg x =
      gpu ? kd_arg(hidden, "student_hidden", {ElemType::kF32, ElemType::kF16, ElemType::kBF16}, 2, -1, -1, false, st)
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
    fused_linear_kd_loss(o, static_cast<const float*>(x.data), static_cast<const float*>(w.data), rows, H, V, t.teacher,
                         static_cast<const int64_t*>(y.data), grad_scale, static_cast<float*>(loss.data),
                         static_cast<float*>(dx.data), static_cast<float*>(dw.data), chunk_rows, cpu_isa);
  });
}

}  // namespace

void register_kd(py::module_& m) {
  m.def(
      "kd_divergences", [] { return choice_names(kDivergences); },
      "The divergence names kd_loss and fused_linear_kd_loss accept.");
  m.def("kd_loss", &py_kd_loss, py::arg("student"), py::arg("loss_rows"), py::arg("grad").none(true) = py::none(),
        py::arg("teacher_logits").none(true) = py::none(), py::arg("topk_ids").none(true) = py::none(),
        py::arg("topk_logprobs").none(true) = py::none(), py::arg("labels").none(true) = py::none(),
        py::arg("divergence"), py::arg("temperature"), py::arg("beta"), py::arg("scale_t2"), py::arg("hard_weight"),
        py::arg("ignore_index"), py::arg("grad_scale"), py::arg("isa") = "auto", py::arg("cuda_stream") = py::none());
  m.def("fused_linear_kd_loss", &py_fused_linear_kd_loss, py::arg("hidden"), py::arg("weight"), py::arg("loss_rows"),
        py::arg("d_hidden").none(true) = py::none(), py::arg("d_weight").none(true) = py::none(),
        py::arg("teacher_logits").none(true) = py::none(), py::arg("topk_ids").none(true) = py::none(),
        py::arg("topk_logprobs").none(true) = py::none(), py::arg("teacher_hidden").none(true) = py::none(),
        py::arg("teacher_head").none(true) = py::none(), py::arg("labels").none(true) = py::none(),
        py::arg("divergence"), py::arg("temperature"), py::arg("beta"), py::arg("scale_t2"), py::arg("hard_weight"),
        py::arg("ignore_index"), py::arg("grad_scale"), py::arg("chunk_rows") = 0, py::arg("isa") = "auto",
        py::arg("cuda_stream") = py::none());
  m.def("fused_kd_chunk_rows", &fused_kd_chunk_rows, py::arg("rows"), py::arg("vocab"));
}

}  // namespace slmops::bindings
