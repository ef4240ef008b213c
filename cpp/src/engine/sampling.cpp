// Token sampling (engine.h). The order is penalties, temperature, top-k, top-p, min-p, then
// one draw; temperature 0 is greedy. Probabilities are computed in double from the scaled
// logits, so the same seed gives the same tokens on every ISA and thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "slmops/engine.h"
#include "slmops/threading.h"

namespace slmops::engine {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

}  // namespace

void check_sampling(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    fail("temperature must be >= 0 (0: greedy), got " + std::to_string(p.temperature));
  if (p.top_k < 0) fail("top_k must be >= 0 (0: off), got " + std::to_string(p.top_k));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail("top_p must be in (0, 1], got " + std::to_string(p.top_p));
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) fail("min_p must be in [0, 1], got " + std::to_string(p.min_p));
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
    fail("repetition_penalty must be positive (1: off), got " + std::to_string(p.repetition_penalty));
  if (!std::isfinite(p.presence_penalty) || !std::isfinite(p.frequency_penalty))
    fail("presence_penalty and frequency_penalty must be finite");
}

Sampler::Sampler(const SamplingParams& params) : p_(params), rng_(params.seed) { check_sampling(params); }

int32_t Sampler::sample(float* logits, int64_t vocab, const int32_t* history, int64_t n_history, int64_t n_prompt) {
  if (vocab <= 0) fail("vocab must be positive");
  if (n_prompt < 0 || n_prompt > n_history) fail("n_prompt must lie in [0, len(history)]");
  if (p_.repetition_penalty != 1.0f || p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f) {
    // (id, generated?) sorted: each id's run tells if it was seen and how often it was generated.
    counts_.clear();
    for (int64_t i = 0; i < n_history; ++i) {
      if (history[i] < 0 || history[i] >= vocab)
        fail("history token " + std::to_string(history[i]) + " is outside the vocabulary");
      counts_.push_back(int64_t(history[i]) * 2 + (i >= n_prompt));
    }
    std::sort(counts_.begin(), counts_.end());
    for (size_t i = 0; i < counts_.size();) {
      const int64_t id = counts_[i] / 2;
      size_t j = i, generated = 0;
      for (; j < counts_.size() && counts_[j] / 2 == id; ++j) generated += counts_[j] % 2;
      float& z = logits[id];
      if (p_.repetition_penalty != 1.0f) z = z > 0.0f ? z / p_.repetition_penalty : z * p_.repetition_penalty;
      if (generated) z -= p_.presence_penalty + p_.frequency_penalty * float(generated);
      i = j;
    }
  }
  if (p_.temperature == 0.0f) return int32_t(argmax(logits, vocab));
  const float inv_t = 1.0f / p_.temperature;
  candidates_.resize(size_t(vocab));
  for (int64_t j = 0; j < vocab; ++j) candidates_[size_t(j)] = {logits[j] * inv_t, int32_t(j), 0.0};
  auto higher = [](const Candidate& a, const Candidate& b) { return a.z > b.z || (a.z == b.z && a.id < b.id); };
  size_t n = candidates_.size();
  size_t sorted = 0;  // candidates_[0, sorted) are the highest, in order
  auto sort_prefix = [&](size_t k) {
    k = std::min(k, n);
    if (k <= sorted) return;
    std::partial_sort(candidates_.begin(), candidates_.begin() + std::ptrdiff_t(k),
                      candidates_.begin() + std::ptrdiff_t(n), higher);
    sorted = k;
  };
  if (p_.top_k > 0 && size_t(p_.top_k) < n) {
    sort_prefix(size_t(p_.top_k));
    n = size_t(p_.top_k);
  }
  sort_prefix(1);
  const double top = candidates_[0].z;
  if (!std::isfinite(top)) fail("the logits hold no finite maximum (NaN or +Inf)");
  // One exp per candidate: the sorts below move the weights with their candidates.
  double total = 0.0;
  for (size_t j = 0; j < n; ++j) total += candidates_[j].weight = std::exp(double(candidates_[j].z) - top);
  size_t kept = n;
  if (p_.top_p < 1.0f) {
    // Sort just enough of the head: double it until it holds top_p of the mass.
    double mass = 0.0;
    size_t j = 0;
    for (size_t k = 64;; k *= 2) {
      sort_prefix(k);
      for (; j < sorted; ++j) {
        mass += candidates_[j].weight / total;
        if (mass >= double(p_.top_p)) break;
      }
      if (j < sorted || sorted == n) break;
    }
    kept = std::min(n, j + 1);
  }
  if (p_.min_p > 0.0f) {
    // p_j >= min_p * p_max  <=>  z_j - z_max >= log(min_p).
    const double floor = top + std::log(double(p_.min_p));
    size_t k = 0;
    for (size_t j = 0; j < kept; ++j)
      if (double(candidates_[j].z) >= floor) candidates_[k++] = candidates_[j];
    kept = k;  // the maximum always stays
  }
  if (kept != n) {
    total = 0.0;
    for (size_t j = 0; j < kept; ++j) total += candidates_[j].weight;
  }
  // 53 random bits: the same draw on every platform (std::uniform_real_distribution is not).
  const double u = double(rng_() >> 11) * 0x1.0p-53 * total;
  double acc = 0.0;
  for (size_t j = 0; j < kept; ++j) {
    acc += candidates_[j].weight;
    if (u < acc) return candidates_[j].id;
  }
  return candidates_[kept - 1].id;
}

int64_t argmax(const float* z, int64_t n) {
  // Blocks reduce to their maximum on independent lanes (no index to carry, so the loop
  // vectorizes); only a block that raises the best is searched for the index.
  constexpr int64_t kBlock = 1024, kLanes = 16;
  float best = -std::numeric_limits<float>::infinity();
  int64_t at = -1;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float lane[kLanes];
    for (float& l : lane) l = -std::numeric_limits<float>::infinity();
    int64_t j = b;
    for (; j + kLanes <= e; j += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) lane[l] = z[j + l] > lane[l] ? z[j + l] : lane[l];
    float m = lane[0];
    for (int64_t l = 1; l < kLanes; ++l) m = lane[l] > m ? lane[l] : m;
    for (; j < e; ++j) m = z[j] > m ? z[j] : m;
    if (m > best || (at < 0 && m == best)) {
      for (j = b; j < e && !(z[j] == m); ++j) {
      }
      if (j < e) {  // (not found: the block is all NaN)
        best = m;
        at = j;
      }
    }
  }
  return at < 0 ? 0 : at;
}

void sample_rows(const SampleRow* rows, int64_t n_rows, float* logits, int64_t vocab, int32_t* out) {
  parallel_for(n_rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      out[r] = rows[r].sampler->sample(logits + r * vocab, vocab, rows[r].history, rows[r].n_history, rows[r].n_prompt);
  });
}

}  // namespace slmops::engine
