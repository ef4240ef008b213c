// Thread control for the CPU kernels. OpenMP when built with it, serial otherwise.
#pragma once

#include <cstdint>
#include <functional>

namespace slmops {

// Threads used by the next parallel kernel. n <= 0 is rejected (std::invalid_argument).
void set_num_threads(int n);
int get_num_threads();
bool openmp_enabled();

// Runs fn(begin, end) over [0, n) split into contiguous chunks, one per thread, static
// schedule. Chunks never nest: a call from inside a parallel region runs serially.
// An exception thrown by fn is rethrown on the calling thread after all chunks end.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace slmops
