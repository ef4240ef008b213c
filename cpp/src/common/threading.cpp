#include "slmops/threading.h"

#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace slmops {

void set_num_threads(int n) {
  if (n <= 0) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

int get_num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
#ifdef _OPENMP
  // omp_get_max_threads(), not omp_get_num_threads(): the latter is 1 outside a region.
  const int64_t threads = omp_in_parallel() ? 1 : std::min<int64_t>(omp_get_max_threads(), n);
  if (threads > 1) {
    std::exception_ptr error;
    std::mutex error_mutex;
#pragma omp parallel for schedule(static) num_threads(int(threads))
    for (int64_t t = 0; t < threads; ++t) {
      const int64_t begin = n * t / threads, end = n * (t + 1) / threads;
      try {
        fn(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  fn(0, n);
}

}  // namespace slmops
