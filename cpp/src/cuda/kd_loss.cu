// Distillation losses on the GPU: one block per row runs the passes of kd_row.h over the
// row's ids with block reductions between them, writing the row's loss and the gradient
// of the student logits in one launch. The fused-linear form walks the rows in chunks:
// cuBLASLt computes a chunk's logits, the row kernel turns them into their gradient in
// place, and two more GEMMs push that gradient into d_hidden and d_weight.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/device.cuh"
#include "cuda/kd_row.h"
#include "cuda/runtime.h"
#include "slmops/cuda.h"

namespace slmops::cuda {
namespace {

constexpr int kThreads = 512;

template <typename T>
struct Logits {
  const T* p;
  __device__ __forceinline__ float operator()(int64_t j) const { return load_f32(p + j); }
};

// Stores d loss / d z_j, with the hard term's -hcoef at the label.
template <typename T>
struct GradStore {
  T* p;
  int64_t label;
  float hcoef;
  __device__ __forceinline__ void operator()(int64_t j, float g) const {
    p[j] = from_f32<T>(j == label ? g - hcoef : g);
  }
};
struct NoStore {
  __device__ __forceinline__ void operator()(int64_t, float) const {}
};

__device__ Lse block_lse(Lse v, float* sm_m, float* sm_d) {
  for (int o = 16; o > 0; o >>= 1) {
    const Lse other{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.d, o)};
    v = lse_merge(v, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sm_m[warp] = v.m;
    sm_d[warp] = v.d;
  }
  __syncthreads();
  Lse total;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) total = lse_merge(total, Lse{sm_m[w], sm_d[w]});
  __syncthreads();
  return total;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    kd_kernel(KdOptions o, const T* __restrict__ student, int64_t vocab, const T* __restrict__ teacher,
              int64_t teacher_vocab, int64_t n, const int64_t* __restrict__ labels, float grad_scale,
              float* __restrict__ loss_rows, T* grad) {
  __shared__ float sm_m[3][32], sm_d[3][32];
  __shared__ double sm_sum[32];
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x, step = blockDim.x;
  const T* zrow = student + row * vocab;
  T* grow = grad ? grad + row * vocab : nullptr;  // may alias zrow (the fused loss)
  const int64_t label = labels ? labels[row] : 0;
  if (labels && label == o.ignore_index) {
    if (grow)
      for (int64_t j = tid; j < vocab; j += step) grow[j] = from_f32<T>(0.0f);
    if (tid == 0) loss_rows[row] = 0.0f;
    return;
  }
  const bool hard = o.hard_weight > 0.0f;
  const bool bad_label = hard && (label < 0 || label >= n);
  const Logits<T> zs{zrow}, ts{teacher ? teacher + row * teacher_vocab : nullptr};
  // Read before any thread writes the gradient over the logits (the barriers below order it).
  const float z_label = (tid == 0 && hard && !bad_label) ? zs(label) : 0.0f;

  Lse lz, lt, lh;
  lse_pass(zs, ts, n, tid, step, 1.0f / o.temperature, teacher != nullptr, hard && o.temperature != 1.0f, lz, lt, lh);
  lz = block_lse(lz, sm_m[0], sm_d[0]);
  lt = block_lse(lt, sm_m[1], sm_d[1]);
  lh = block_lse(lh, sm_m[2], sm_d[2]);
  const KdRow r = make_kd_row(o, grad_scale, lz, lt, lh, teacher != nullptr);

  double soft = 0.0, kl = 0.0;
  const GradStore<T> store{grow, bad_label ? -1 : label, r.hcoef};
  if (r.soft) {
    if (grow)
      soft_pass(r, zs, ts, n, tid, step, grad_in_soft_pass(r), store, &soft, &kl);
    else
      soft_pass(r, zs, ts, n, tid, step, false, NoStore{}, &soft, &kl);
    soft = block_sum(soft, sm_sum);
    kl = block_sum(kl, sm_sum);
  }
  if (grow) {
    if (!grad_in_soft_pass(r)) grad_pass(r, zs, ts, n, tid, step, float(kl), store);
    for (int64_t j = n + tid; j < vocab; j += step) grow[j] = from_f32<T>(0.0f);
  }
  if (tid == 0) {
    const float T_ = o.temperature, f = o.scale_t2 ? T_ * T_ : 1.0f;
    double loss = r.soft ? double(1.0f - o.hard_weight) * f * soft : 0.0;
    if (hard) loss += double(o.hard_weight) * (double(r.lh) - z_label);
    loss_rows[row] = bad_label ? __int_as_float(0x7fc00000) : float(loss);
  }
}

void validate(const KdOptions& o, int64_t rows, int64_t vocab, const CudaKdTeacher& t, const int64_t* labels) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("cuda kd loss: " + m); };
  if (rows < 0 || vocab <= 0) fail("rows must be >= 0 and vocab > 0");
  if (!(o.temperature > 0.0f) || !std::isfinite(o.temperature)) fail("temperature must be positive and finite");
  if (!(o.beta >= 0.0f && o.beta <= 1.0f)) fail("beta must be in [0, 1]");
  if (!(o.hard_weight >= 0.0f && o.hard_weight <= 1.0f)) fail("hard_weight must be in [0, 1]");
  if (o.hard_weight > 0.0f && !labels) fail("hard_weight > 0 needs labels");
  const int forms = (t.logits != nullptr) + (t.hidden != nullptr);
  if (forms == 0 && o.hard_weight != 1.0f)
    fail("without a teacher the loss is cross entropy only: hard_weight must be 1");
  if (forms > 1) fail("the teacher must be given as logits or as hidden states, not both");
  if (forms && t.vocab <= 0) fail("teacher vocab must be > 0");
  if (t.hidden && (!t.head || t.hidden_size <= 0)) fail("teacher hidden states need head [vocab, hidden_size]");
}

void launch_rows(const KdOptions& o, const void* student, DType dtype, int64_t rows, int64_t vocab,
                 const void* teacher_logits, int64_t teacher_vocab, const int64_t* labels, float grad_scale,
                 float* loss_rows, void* grad, cudaStream_t stream) {
  if (rows == 0) return;
  const int64_t n = teacher_logits ? std::min(vocab, teacher_vocab) : vocab;
  with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    kd_kernel<T><<<unsigned(rows), kThreads, 0, stream>>>(o, static_cast<const T*>(student), vocab,
                                                          static_cast<const T*>(teacher_logits), teacher_vocab, n,
                                                          labels, grad_scale, loss_rows, static_cast<T*>(grad));
  });
  check_launch("kd loss kernel launch");
}

}  // namespace

void kd_loss_fwd_bwd(const KdOptions& opt, const void* student, DType dtype, int64_t rows, int64_t vocab,
                     const CudaKdTeacher& teacher, const int64_t* labels, float grad_scale, float* loss_rows,
                     void* grad, void* stream) {
  validate(opt, rows, vocab, teacher, labels);
  if (teacher.hidden) throw std::invalid_argument("cuda kd loss: teacher hidden states need the fused loss");
  launch_rows(opt, student, dtype, rows, vocab, teacher.logits, teacher.vocab, labels, grad_scale, loss_rows, grad,
              static_cast<cudaStream_t>(stream));
}

void fused_linear_kd_loss(const KdOptions& opt, const void* hidden, const void* weight, DType dtype, int64_t rows,
                          int64_t H, int64_t vocab, const CudaKdTeacher& teacher, const int64_t* labels,
                          float grad_scale, float* loss_rows, float* d_hidden, float* d_weight, int64_t chunk_rows,
                          void* stream_ptr) {
  validate(opt, rows, vocab, teacher, labels);
  if (H <= 0) throw std::invalid_argument("cuda fused kd loss: hidden size must be > 0");
  if (rows == 0) return;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t C = chunk_rows > 0 ? std::min(chunk_rows, rows) : fused_kd_chunk_rows(rows, vocab);
  const size_t esize = size_t(dtype_size(dtype));
  const GemmType gt = gemm_type(dtype);
  StreamBuffer logits(size_t(C * vocab) * esize, stream);
  StreamBuffer teacher_logits(teacher.hidden ? size_t(C * teacher.vocab) * esize : 0, stream);
  for (int64_t r0 = 0; r0 < rows; r0 += C) {
    const int64_t c = std::min(C, rows - r0);
    const auto* h = static_cast<const char*>(hidden) + size_t(r0 * H) * esize;
    gemm(c, vocab, H, {h, gt, H, false}, {weight, gt, H, true}, logits.get(), gt, vocab, 1.0f, 0.0f, stream);
    const void* t = nullptr;
    if (teacher.hidden) {
      const auto* th = static_cast<const char*>(teacher.hidden) + size_t(r0 * teacher.hidden_size) * esize;
      gemm(c, teacher.vocab, teacher.hidden_size, {th, gt, teacher.hidden_size, false},
           {teacher.head, gt, teacher.hidden_size, true}, teacher_logits.get(), gt, teacher.vocab, 1.0f, 0.0f, stream);
      t = teacher_logits.get();
    } else if (teacher.logits) {
      t = static_cast<const char*>(teacher.logits) + size_t(r0 * teacher.vocab) * esize;
    }
    // The gradient overwrites the logits it is computed from (kd_kernel reads each id
    // before writing it).
    launch_rows(opt, logits.get(), dtype, c, vocab, t, teacher.vocab, labels ? labels + r0 : nullptr, grad_scale,
                loss_rows + r0, logits.get(), stream);
    if (d_hidden)
      gemm(c, H, vocab, {logits.get(), gt, vocab, false}, {weight, gt, H, false}, d_hidden + r0 * H, GemmType::kF32, H,
           1.0f, 0.0f, stream);
    if (d_weight)
      gemm(vocab, H, c, {logits.get(), gt, vocab, true}, {h, gt, H, false}, d_weight, GemmType::kF32, H, 1.0f, 1.0f,
           stream);
  }
}

}  // namespace slmops::cuda
