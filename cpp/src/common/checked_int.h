// Size arithmetic on values a caller controls (shapes, group sizes, counts read from
// files). Every product or sum that sizes or indexes a buffer goes through these, so an
// overflow is a std::invalid_argument (ValueError in Python) naming the quantity, never a
// wrapped size that a later bounds check would accept.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace slmops {

[[noreturn]] inline void size_overflow(const char* what, int64_t a, const char* op, int64_t b) {
  throw std::invalid_argument(std::string(what) + " overflows 64-bit sizes (" + std::to_string(a) + " " + op + " " +
                              std::to_string(b) + "); the shape or group size is far too large");
}

inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) size_overflow(what, a, "*", b);
  return r;
}

inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) size_overflow(what, a, "+", b);
  return r;
}

// ceil(a / b) for a >= 0, b > 0 without forming a + b - 1 (which overflows for huge b).
inline int64_t ceil_div(int64_t a, int64_t b) { return a == 0 ? 0 : (a - 1) / b + 1; }

}  // namespace slmops
