// sgemm: oneDNN's when slmops is built with it (AVX-512/AVX2 blocked, threaded), else a
// plain row-parallel loop so that a build without oneDNN still works.
#include <stdexcept>
#include <string>
#include <vector>

#include "slmops/gemm.h"
#include "slmops/threading.h"

#ifdef SLMOPS_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace slmops {

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
#ifdef SLMOPS_HAVE_ONEDNN
  const dnnl_status_t st =
      dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (st != dnnl_success) throw std::runtime_error("oneDNN sgemm failed with status " + std::to_string(int(st)));
#else
  parallel_for(M, [&](int64_t m0, int64_t m1) {
    std::vector<float> acc(size_t(N));
    for (int64_t i = m0; i < m1; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t k = 0; k < K; ++k) {
        const float a = trans_a ? A[k * lda + i] : A[i * lda + k];
        if (a == 0.0f) continue;
        if (trans_b) {
          for (int64_t j = 0; j < N; ++j) acc[j] += a * B[j * ldb + k];
        } else {
          const float* b = B + k * ldb;
          for (int64_t j = 0; j < N; ++j) acc[j] += a * b[j];
        }
      }
      float* c = C + i * ldc;
      for (int64_t j = 0; j < N; ++j) c[j] = alpha * acc[j] + (beta == 0.0f ? 0.0f : beta * c[j]);
    }
  });
#endif
}

}  // namespace slmops
