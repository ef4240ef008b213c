// Layer 1: the weights packed for the kernels, each with the Python arrays it borrows, as
// the Python classes _C.PackedWeight, _C.NMSparseWeight and _C.CsrWeight hold them. Defined
// by qmatmul.cpp and sparse.cpp; the engine binding (engine.cpp) takes them as its linears.
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"
#include "slmops/qmatmul.h"
#include "slmops/spmm.h"

namespace slmops::bindings {

// A packed quantized weight and the Python arrays it borrows from, kept alive together.
struct PyPackedWeight {
  PackedWeight w;
  Borrowed data, scales, zero_points;
  void check() const {
    for (const Borrowed* b : {&data, &scales, &zero_points}) check_borrowed(*b);
  }
};

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

}  // namespace slmops::bindings
