// The decoder graph of the engine (engine.h): embedding, per layer RMSNorm -> q/k/v ->
// RoPE -> cached grouped-query attention -> o, RMSNorm -> SwiGLU MLP, then the final norm
// and the head, over the layer-0 kernels; and the block-pool KV cache.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>

#include "common/half.h"
#include "cpu/engine_kernels.h"
#include "cpu/isa_dispatch.h"
#include "slmops/engine.h"
#include "slmops/gemm.h"
#include "slmops/threading.h"

namespace slmops {

const cpu::EngineKernels& cpu::engine_kernels_for(CpuIsa isa) {
  return kernels_for_isa<EngineKernels>(isa, SLMOPS_CPU_ISA_KERNELS(engine_kernels));
}

namespace engine {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

void check_linear(const Linear& l, int64_t N, int64_t K, const std::string& name) {
  const std::string shape = "[" + std::to_string(N) + ", " + std::to_string(K) + "]";
  switch (l.kind) {
    case Linear::Kind::kDense:
      if (!l.dense) fail(name + ": dense weight without data");
      break;
    case Linear::Kind::kQuantized:
      if (!l.quantized) fail(name + ": quantized weight without a packed weight");
      if (l.quantized->N != l.N || l.quantized->K != l.K)
        fail(name + ": packed weight shape differs from the linear's");
      break;
    case Linear::Kind::kSparseNM:
      if (!l.nm) fail(name + ": n:m weight missing");
      if (l.nm->N != l.N || l.nm->K != l.K) fail(name + ": n:m weight shape differs from the linear's");
      break;
    case Linear::Kind::kSparseCsr:
      if (!l.csr) fail(name + ": CSR weight missing");
      if (l.csr->N != l.N || l.csr->K != l.K) fail(name + ": CSR weight shape differs from the linear's");
      break;
    default: fail(name + ": missing");
  }
  if (l.N != N || l.K != K)
    fail(name + " has shape [" + std::to_string(l.N) + ", " + std::to_string(l.K) + "], the config needs " + shape);
}

// y [M, N] = x [M, K] @ W^T + bias.
void run_linear(const Linear& l, const float* x, int64_t M, float* y) {
  switch (l.kind) {
    case Linear::Kind::kDense:
      sgemm(false, true, M, l.N, l.K, 1.0f, x, l.K, l.dense, l.K, 0.0f, y, l.N);
      if (l.bias)
        for (int64_t r = 0; r < M; ++r)
          for (int64_t j = 0; j < l.N; ++j) y[r * l.N + j] += l.bias[j];
      return;
    case Linear::Kind::kQuantized:
      qmatmul(*l.quantized, x, DType::kF32, M, l.bias, y, DType::kF32, l.activation);
      return;
    case Linear::Kind::kSparseNM: spmm_nm(*l.nm, x, M, l.bias, y, CpuIsa::kAuto, l.sparse_activation); return;
    case Linear::Kind::kSparseCsr: spmm_csr(*l.csr, x, M, l.bias, y); return;
    default: fail("linear without a weight");
  }
}

// Several linears over the same x: quantized ones of one layout share a qmatmul_group (one
// activation quantization, one parallel region); anything else runs one by one.
void run_linears(std::initializer_list<std::pair<const Linear*, float*>> linears, const float* x, int64_t M) {
  const Linear& first = *linears.begin()->first;
  bool grouped = first.kind == Linear::Kind::kQuantized;
  for (const auto& [l, y] : linears)
    grouped = grouped && l->kind == Linear::Kind::kQuantized && l->activation == first.activation &&
              l->quantized->kind == first.quantized->kind &&
              l->quantized->spec.format == first.quantized->spec.format &&
              l->quantized->group == first.quantized->group && l->quantized->row_bytes == first.quantized->row_bytes;
  if (!grouped) {
    for (const auto& [l, y] : linears) run_linear(*l, x, M, y);
    return;
  }
  std::vector<QMatmulTarget> targets;
  for (const auto& [l, y] : linears) targets.push_back({l->quantized, l->bias, y});
  qmatmul_group(targets, x, M, first.activation);
}

// dst [M, n] = src * rsqrt(mean(src^2) + eps) * w, row by row.
void rms_norm(const float* src, const float* w, int64_t M, int64_t n, float eps, float* dst) {
  for (int64_t r = 0; r < M; ++r) {
    const float* x = src + r * n;
    // Independent partial sums: one running sum is a 4-cycle add per element.
    constexpr int64_t kLanes = 16;
    float part[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) part[l] += x[j + l] * x[j + l];
    float ss = 0.0f;
    for (float p : part) ss += p;
    for (; j < n; ++j) ss += x[j] * x[j];
    const float inv = 1.0f / std::sqrt(ss / float(n) + eps);
    float* out = dst + r * n;
    for (int64_t j = 0; j < n; ++j) out[j] = w[j] * (x[j] * inv);
  }
}

// Rotate-half RoPE of `heads` heads of one row, in place; cs holds the row's cos and sin
// [2][d / 2] (the same for every layer: made once per forward).
void rope(float* x, int64_t heads, int64_t d, const float* cs) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * d;
    for (int64_t i = 0; i < half; ++i) {
      const float c = cs[i], s = cs[half + i], a = v[i], b = v[i + half];
      v[i] = a * c - b * s;
      v[i + half] = b * c + a * s;
    }
  }
}

}  // namespace

const char* phase_name(Phase p) {
  static const char* names[] = {"embed",   "qkv",  "rope_cache",     "attention", "out_proj",
                                "gate_up", "down", "norms_residual", "head"};
  return names[int(p)];
}

void Model::set_profiling(bool on) {
  if (on && !profiling_) std::fill(phase_seconds_.begin(), phase_seconds_.end(), 0.0);
  profiling_ = on;
}

namespace {
// Bytes of one head's keys or values in one block and layer (engine.h: Model::cache_region).
int64_t cache_region_bytes(int64_t block_tokens, int64_t head_dim, KvDType t) {
  switch (t) {
    case KvDType::kF32: return block_tokens * head_dim * 4;
    case KvDType::kF16: return block_tokens * head_dim * 2;
    case KvDType::kI8: return block_tokens * head_dim + block_tokens * 4;
  }
  fail("unknown KV cache dtype");
}

// Symmetric int8 codes of x[0, d) at codes[i * stride]; returns their scale (absmax / 127).
float quantize_kv(const float* x, int64_t d, int8_t* codes, int64_t stride) {
  float amax = 0.0f;
  for (int64_t i = 0; i < d; ++i) amax = std::max(amax, std::abs(x[i]));
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t i = 0; i < d; ++i) codes[i * stride] = int8_t(std::clamp(std::lrint(x[i] * inv), -127L, 127L));
  return amax / 127.0f;
}
}  // namespace

int64_t cache_block_bytes(const ModelConfig& c, int64_t block_tokens, KvDType kv_dtype) {
  return 2 * c.n_layers * c.n_kv_heads * cache_region_bytes(block_tokens, c.head_dim, kv_dtype);
}

Model::Model(ModelConfig config, ModelWeights weights, CacheOptions cache)
    : config_(std::move(config)), weights_(std::move(weights)), cache_(cache) {
  const ModelConfig& c = config_;
  for (auto [v, name] : {std::pair{c.n_layers, "n_layers"},
                         {c.hidden, "hidden"},
                         {c.n_heads, "n_heads"},
                         {c.n_kv_heads, "n_kv_heads"},
                         {c.head_dim, "head_dim"},
                         {c.intermediate, "intermediate"},
                         {c.vocab, "vocab"},
                         {c.max_context, "max_context"}})
    if (v <= 0) fail(std::string("config ") + name + " must be positive, got " + std::to_string(v));
  if (c.n_heads % c.n_kv_heads) fail("n_heads must be a multiple of n_kv_heads");
  if (c.head_dim % 2) fail("head_dim must be even for rotary embeddings");
  if (int64_t(c.inv_freq.size()) != c.head_dim / 2)
    fail("inv_freq must hold head_dim / 2 = " + std::to_string(c.head_dim / 2) + " frequencies, got " +
         std::to_string(c.inv_freq.size()));
  if (c.sliding_window < 0) fail("sliding_window must be >= 0");
  if (!(c.rms_eps > 0.0f)) fail("rms_eps must be positive");
  if (cache_.block_tokens <= 0 || cache_.max_blocks <= 0 || cache_.max_step_tokens <= 0)
    fail("cache block_tokens, max_blocks and max_step_tokens must be positive");
  if (cache_.block_tokens % 16) fail("cache block_tokens must be a multiple of 16 (the attention kernels' width)");
  if (cache_.max_blocks > std::numeric_limits<int32_t>::max()) fail("too many cache blocks");
  if (int64_t(weights_.layers.size()) != c.n_layers)
    fail("the model has " + std::to_string(c.n_layers) + " layers, got weights for " +
         std::to_string(weights_.layers.size()));
  const Embedding& e = weights_.embed;
  if (e.quantized) {
    quant_layout(e.spec, c.hidden);  // throws if the format cannot hold rows of `hidden`
    if (!e.storage.data) fail("quantized embedding without data");
  } else if (!e.dense) {
    fail("embedding missing");
  }
  const int64_t q_width = c.n_heads * c.head_dim, kv_width = c.n_kv_heads * c.head_dim;
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const LayerWeights& L = weights_.layers[size_t(i)];
    const std::string p = "layer " + std::to_string(i) + " ";
    if (!L.attn_norm || !L.mlp_norm) fail(p + "norm weights missing");
    check_linear(L.q, q_width, c.hidden, p + "q_proj");
    check_linear(L.k, kv_width, c.hidden, p + "k_proj");
    check_linear(L.v, kv_width, c.hidden, p + "v_proj");
    check_linear(L.o, c.hidden, q_width, p + "o_proj");
    check_linear(L.gate, c.intermediate, c.hidden, p + "gate_proj");
    check_linear(L.up, c.intermediate, c.hidden, p + "up_proj");
    check_linear(L.down, c.hidden, c.intermediate, p + "down_proj");
  }
  if (!weights_.final_norm) fail("final norm weight missing");
  check_linear(weights_.head, c.vocab, c.hidden, "lm_head");
  cache_pool_.assign(size_t(cache_.max_blocks * cache_block_bytes(c, cache_.block_tokens, cache_.kv_dtype)), 0);
  free_blocks_.resize(size_t(cache_.max_blocks));
  // Handed out from the back: block 0 first.
  for (int64_t b = 0; b < cache_.max_blocks; ++b) free_blocks_[size_t(b)] = int32_t(cache_.max_blocks - 1 - b);
}

int64_t Model::add_sequence() {
  sequences_.push_back({next_id_, Sequence{}});
  return next_id_++;
}

Model::Sequence& Model::sequence(int64_t id) {
  for (auto& [sid, s] : sequences_)
    if (sid == id) return s;
  fail("unknown sequence " + std::to_string(id));
}
const Model::Sequence& Model::sequence(int64_t id) const { return const_cast<Model*>(this)->sequence(id); }

void Model::remove_sequence(int64_t id) {
  auto it = std::find_if(sequences_.begin(), sequences_.end(), [&](const auto& p) { return p.first == id; });
  if (it == sequences_.end()) fail("unknown sequence " + std::to_string(id));
  for (int32_t b : it->second.blocks) free_blocks_.push_back(b);
  sequences_.erase(it);
}

int64_t Model::sequence_length(int64_t id) const { return sequence(id).length; }

std::vector<int64_t> Model::sequences() const {
  std::vector<int64_t> ids;
  for (const auto& p : sequences_) ids.push_back(p.first);
  return ids;
}

uint8_t* Model::cache_region(int32_t block, int64_t layer, int kv, int64_t head) {
  const ModelConfig& c = config_;
  const int64_t region = cache_region_bytes(cache_.block_tokens, c.head_dim, cache_.kv_dtype);
  // Blocks innermost: a sequence's blocks, mostly handed out in order, lie one after another
  // for each layer and head, so attention reads one stream that the prefetchers follow.
  return cache_pool_.data() + (((layer * 2 + kv) * c.n_kv_heads + head) * cache_.max_blocks + block) * region;
}

int64_t Model::logit_rows(const std::vector<StepEntry>& batch) {
  int64_t n = 0;
  for (const StepEntry& e : batch) n += e.all_logits ? e.n_tokens : 1;
  return n;
}

void Model::forward(const std::vector<StepEntry>& batch, float* logits) {
  const ModelConfig& c = config_;
  const int64_t bt = cache_.block_tokens;
  // Check everything before any sequence changes.
  std::vector<Sequence*> seqs;
  int64_t blocks_needed = 0;
  for (const StepEntry& e : batch) {
    Sequence& s = sequence(e.sequence);
    if (std::find(seqs.begin(), seqs.end(), &s) != seqs.end())
      fail("sequence " + std::to_string(e.sequence) + " appears twice in one step");
    seqs.push_back(&s);
    if (e.n_tokens <= 0 || !e.tokens) fail("sequence " + std::to_string(e.sequence) + ": no tokens to add");
    for (int64_t i = 0; i < e.n_tokens; ++i)
      if (e.tokens[i] < 0 || e.tokens[i] >= c.vocab)
        fail("token id " + std::to_string(e.tokens[i]) + " is outside the vocabulary [0, " + std::to_string(c.vocab) +
             ")");
    if (s.length + e.n_tokens > c.max_context)
      fail("sequence " + std::to_string(e.sequence) + " would hold " + std::to_string(s.length + e.n_tokens) +
           " tokens, more than the context of " + std::to_string(c.max_context));
    blocks_needed += (s.length + e.n_tokens + bt - 1) / bt - int64_t(s.blocks.size());
  }
  if (blocks_needed > free_blocks())
    throw CacheFullError("the KV cache is full: this step needs " + std::to_string(blocks_needed) + " more blocks of " +
                         std::to_string(bt) + " tokens, " + std::to_string(free_blocks()) + " are free (of " +
                         std::to_string(cache_.max_blocks) +
                         "); finish or remove sequences, or give the cache more memory");
  if (batch.empty()) return;
  for (size_t i = 0; i < batch.size(); ++i) {
    Sequence& s = *seqs[i];
    while (int64_t(s.blocks.size()) * bt < s.length + batch[i].n_tokens) {
      s.blocks.push_back(free_blocks_.back());
      free_blocks_.pop_back();
    }
  }
  // Split the batch into chunks of at most max_step_tokens rows; a long entry spans chunks.
  std::vector<int32_t> tokens;
  std::vector<Row> rows;
  std::vector<int64_t> chunk_logits;  // per chunk row: the logits row it fills, or -1
  int64_t out_row = 0;
  auto flush = [&] {
    if (rows.empty()) return;
    run_chunk(tokens, rows, seqs, chunk_logits, logits);
    tokens.clear();
    rows.clear();
    chunk_logits.clear();
  };
  for (size_t i = 0; i < batch.size(); ++i) {
    const StepEntry& e = batch[i];
    for (int64_t t = 0; t < e.n_tokens; ++t) {
      tokens.push_back(e.tokens[t]);
      rows.push_back({int64_t(i), seqs[i]->length + t});
      const bool wants = e.all_logits || t == e.n_tokens - 1;
      chunk_logits.push_back(wants ? out_row++ : -1);
      if (int64_t(rows.size()) == cache_.max_step_tokens) flush();
    }
  }
  flush();
  for (size_t i = 0; i < batch.size(); ++i) seqs[i]->length += batch[i].n_tokens;
}

void Model::run_chunk(const std::vector<int32_t>& tokens, const std::vector<Row>& rows,
                      const std::vector<Sequence*>& seqs, const std::vector<int64_t>& logit_rows, float* logits) {
  const ModelConfig& c = config_;
  const int64_t M = int64_t(rows.size()), H = c.hidden, d = c.head_dim, bt = cache_.block_tokens;
  const int64_t q_width = c.n_heads * d, kv_width = c.n_kv_heads * d;
  const cpu::EngineKernels& kern = cpu::engine_kernels_for(CpuIsa::kAuto);
  // Profiling: each mark() charges the time since the previous one to a phase.
  using Clock = std::chrono::steady_clock;
  Clock::time_point last_mark = profiling_ ? Clock::now() : Clock::time_point{};
  auto mark = [&](Phase p) {
    if (!profiling_) return;
    const Clock::time_point now = Clock::now();
    phase_seconds_[size_t(p)] += std::chrono::duration<double>(now - last_mark).count();
    last_mark = now;
  };
  std::vector<float> x(size_t(M * H)), h(size_t(M * H)), q(size_t(M * q_width)), k(size_t(M * kv_width)),
      v(size_t(M * kv_width)), attn(size_t(M * q_width)), gate(size_t(M * c.intermediate)),
      up(size_t(M * c.intermediate));

  const Embedding& e = weights_.embed;
  const QuantLayout L = e.quantized ? quant_layout(e.spec, H) : QuantLayout{};
  for (int64_t r = 0; r < M; ++r) {
    const int64_t id = tokens[size_t(r)];
    if (!e.quantized) {
      std::memcpy(&x[size_t(r * H)], e.dense + id * H, size_t(H) * sizeof(float));
      continue;
    }
    ConstQuantStorage row{e.storage.data + id * L.data_bytes_per_row,
                          e.storage.scales ? e.storage.scales + (L.tensor_scale ? 0 : id * L.scales_per_row) : nullptr,
                          e.storage.zero_points ? e.storage.zero_points + id * L.zero_point_bytes_per_row : nullptr};
    dequantize(e.spec, row, 1, H, &x[size_t(r * H)], DType::kF32);
  }
  const int64_t half = d / 2;
  std::vector<float> rope_cs(size_t(M * d));  // per row: cos, then sin, of each frequency
  for (int64_t r = 0; r < M; ++r)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(rows[size_t(r)].position) * c.inv_freq[size_t(i)];
      rope_cs[size_t(r * d + i)] = std::cos(angle) * c.rope_attention_scale;
      rope_cs[size_t(r * d + half + i)] = std::sin(angle) * c.rope_attention_scale;
    }
  mark(Phase::kEmbed);

  for (int64_t layer = 0; layer < c.n_layers; ++layer) {
    const LayerWeights& W = weights_.layers[size_t(layer)];
    rms_norm(x.data(), W.attn_norm, M, H, c.rms_eps, h.data());
    mark(Phase::kNormsResidual);
    run_linears({{&W.q, q.data()}, {&W.k, k.data()}, {&W.v, v.data()}}, h.data(), M);
    mark(Phase::kQkv);
    // Rows in parallel: each writes its own cache slots, and the writes miss (a block was
    // last touched a step ago), so two threads keep twice the misses in flight.
    parallel_for(M, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const Row& row = rows[size_t(r)];
        rope(&q[size_t(r * q_width)], c.n_heads, d, &rope_cs[size_t(r * d)]);
        rope(&k[size_t(r * kv_width)], c.n_kv_heads, d, &rope_cs[size_t(r * d)]);
        const Sequence& s = *seqs[size_t(row.sequence_slot)];
        const int32_t block = s.blocks[size_t(row.position / bt)];
        const int64_t slot = row.position % bt;
        for (int64_t g = 0; g < c.n_kv_heads; ++g) {
          const float* kr = &k[size_t(r * kv_width + g * d)];
          const float* vr = &v[size_t(r * kv_width + g * d)];
          uint8_t* kt = cache_region(block, layer, 0, g);
          uint8_t* vt = cache_region(block, layer, 1, g);
          switch (cache_.kv_dtype) {
            case KvDType::kF16: {
              auto* kh = reinterpret_cast<uint16_t*>(kt);
              auto* vh = reinterpret_cast<uint16_t*>(vt) + slot * d;
              for (int64_t i = 0; i < d; ++i) {
                kh[i * bt + slot] = f32_to_f16(kr[i]);
                vh[i] = f32_to_f16(vr[i]);
              }
              break;
            }
            case KvDType::kI8: {
              reinterpret_cast<float*>(kt + bt * d)[slot] =
                  quantize_kv(kr, d, reinterpret_cast<int8_t*>(kt) + slot, bt);
              reinterpret_cast<float*>(vt + bt * d)[slot] =
                  quantize_kv(vr, d, reinterpret_cast<int8_t*>(vt) + slot * d, 1);
              break;
            }
            case KvDType::kF32: {
              auto* kf = reinterpret_cast<float*>(kt);
              for (int64_t i = 0; i < d; ++i) kf[i * bt + slot] = kr[i];
              std::memcpy(reinterpret_cast<float*>(vt) + slot * d, vr, size_t(d) * sizeof(float));
              break;
            }
          }
        }
      }
    });
    mark(Phase::kRopeCache);
    attention(layer, rows, seqs, q.data(), attn.data());
    mark(Phase::kAttention);
    run_linear(W.o, attn.data(), M, h.data());
    mark(Phase::kOut);
    for (int64_t i = 0; i < M * H; ++i) x[size_t(i)] += h[size_t(i)];
    rms_norm(x.data(), W.mlp_norm, M, H, c.rms_eps, h.data());
    mark(Phase::kNormsResidual);
    run_linears({{&W.gate, gate.data()}, {&W.up, up.data()}}, h.data(), M);
    kern.silu_mul(gate.data(), up.data(), M * c.intermediate);
    mark(Phase::kGateUp);
    run_linear(W.down, gate.data(), M, h.data());
    mark(Phase::kDown);
    for (int64_t i = 0; i < M * H; ++i) x[size_t(i)] += h[size_t(i)];
  }

  // The head runs only on the rows whose logits were asked for.
  std::vector<int64_t> wanted;
  for (int64_t r = 0; r < M; ++r)
    if (logit_rows[size_t(r)] >= 0) wanted.push_back(r);
  if (wanted.empty()) return;
  std::vector<float> last(wanted.size() * size_t(H));
  for (size_t i = 0; i < wanted.size(); ++i)
    rms_norm(&x[size_t(wanted[i] * H)], weights_.final_norm, 1, H, c.rms_eps, &last[i * size_t(H)]);
  // Wanted rows map to consecutive logits rows (entries are laid out in order).
  run_linear(weights_.head, last.data(), int64_t(wanted.size()), logits + logit_rows[size_t(wanted[0])] * c.vocab);
  mark(Phase::kHead);
}

namespace {
constexpr int64_t kKeysAhead = 4;  // blocks
inline void prefetch_bytes(const uint8_t* p, int64_t bytes) {
  for (int64_t at = 0; at < bytes; at += 64) __builtin_prefetch(p + at);
}
// Into L2 only (prefetcht1): a whole task's keys and values are more than L1 holds.
inline void prefetch_bytes_l2(const uint8_t* p, int64_t bytes) {
  for (int64_t at = 0; at < bytes; at += 64) __builtin_prefetch(p + at, 0, 2);
}
}  // namespace

void Model::attention(int64_t layer, const std::vector<Row>& rows, const std::vector<Sequence*>& seqs, const float* q,
                      float* out) {
  const ModelConfig& c = config_;
  const int64_t d = c.head_dim, bt = cache_.block_tokens, group = c.n_heads / c.n_kv_heads;
  const int64_t M = int64_t(rows.size());
  const float scale = 1.0f / std::sqrt(float(d));
  const cpu::EngineKernels& kern = cpu::engine_kernels_for(CpuIsa::kAuto);
  const KvDType kv_dtype = cache_.kv_dtype;
  const int64_t block_bytes = cache_region_bytes(bt, d, kv_dtype);
  // A task is one query row, kv head and run of the query heads that share it (each key and
  // value is then read once for the run); groups are split into runs only when there are too
  // few tasks to keep every thread busy (a batch-1 decode step).
  const int64_t threads = get_num_threads();
  const int64_t splits = std::clamp<int64_t>((2 * threads + M * c.n_kv_heads - 1) / (M * c.n_kv_heads), 1, group);
  const int64_t run = (group + splits - 1) / splits;
  const int64_t runs_per_group = (group + run - 1) / run;
  // Positions lo..pos of a row: causal, and inside the sliding window when the model has one.
  auto first_position = [&](int64_t pos) {
    return c.sliding_window > 0 ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
  };
  // Task t's keys and values, requested into L2 while task t - 1 computes: a decode batch's
  // tasks each read a short run of blocks, which the hardware prefetchers do not start on
  // in time (SmolLM2 int4, batch 32: attention 12.1 -> 9.7 ms a step, medians of 5 rounds).
  // Not when the task before read the same blocks (a run of the same kv head, or the
  // previous row of the same sequence: prefill), which are then in cache already.
  // Task t's query row and kv head (its run of that head's query heads: t % runs_per_group).
  auto task_row = [&](int64_t t) { return t / (c.n_kv_heads * runs_per_group); };
  auto task_kv_head = [&](int64_t t) { return t / runs_per_group % c.n_kv_heads; };
  auto prefetch_task = [&](int64_t t) {
    const int64_t r = task_row(t);
    const Row& row = rows[size_t(r)];
    if (t % runs_per_group || (r > 0 && rows[size_t(r - 1)].sequence_slot == row.sequence_slot)) return;
    const Sequence& s = *seqs[size_t(row.sequence_slot)];
    const int64_t g = task_kv_head(t);
    for (int64_t b = first_position(row.position) / bt; b <= row.position / bt; ++b)
      for (int kv = 0; kv < 2; ++kv) prefetch_bytes_l2(cache_region(s.blocks[size_t(b)], layer, kv, g), block_bytes);
  };
  parallel_for(M * c.n_kv_heads * runs_per_group, [&](int64_t t0, int64_t t1) {
    std::vector<float> scores, block_scores(static_cast<size_t>(run * bt));
    for (int64_t t = t0; t < t1; ++t) {
      if (t + 1 < t1) prefetch_task(t + 1);
      const int64_t r = task_row(t), g = task_kv_head(t);
      const int64_t h0 = g * group + t % runs_per_group * run, heads = std::min(run, (g + 1) * group - h0);
      const Row& row = rows[size_t(r)];
      const Sequence& s = *seqs[size_t(row.sequence_slot)];
      const int64_t pos = row.position, lo = first_position(pos);
      const int64_t len = pos - lo + 1;
      scores.resize(size_t(heads * len));  // [heads][len]
      const float* qh = q + r * c.n_heads * d + h0 * d;
      // Keys are scored a whole block from its first slot (the kernels' lanes line up with
      // the block's columns); a window that starts inside a block drops the slots before it.
      for (int64_t b0 = lo / bt * bt; b0 <= pos; b0 += bt) {
        const int64_t n = std::min(bt, pos + 1 - b0), skip = std::max<int64_t>(0, lo - b0);
        const uint8_t* kt = cache_region(s.blocks[size_t(b0 / bt)], layer, 0, g);
        // A task reads a few short streams (its blocks' keys, then values): too short for
        // the hardware prefetcher, so the keys kKeysAhead blocks on and this block's values
        // (read after the softmax) are requested now: SmolLM2 at batch 32, 13.5 -> 9 ms a step.
        const int64_t ahead = b0 / bt + kKeysAhead;
        if (ahead <= pos / bt) prefetch_bytes(cache_region(s.blocks[size_t(ahead)], layer, 0, g), block_bytes);
        prefetch_bytes(cache_region(s.blocks[size_t(b0 / bt)], layer, 1, g), block_bytes);
        float* dst = skip ? block_scores.data() : &scores[size_t(b0 - lo)];
        const int64_t stride = skip ? bt : len;
        switch (kv_dtype) {
          case KvDType::kF16:
            kern.scores_f16(qh, heads, reinterpret_cast<const uint16_t*>(kt), n, bt, d, scale, dst, stride);
            break;
          case KvDType::kI8:
            kern.scores_i8(qh, heads, reinterpret_cast<const int8_t*>(kt), reinterpret_cast<const float*>(kt + bt * d),
                           n, bt, d, scale, dst, stride);
            break;
          case KvDType::kF32:
            kern.scores_f32(qh, heads, reinterpret_cast<const float*>(kt), n, bt, d, scale, dst, stride);
            break;
        }
        if (skip)
          for (int64_t h = 0; h < heads; ++h)
            std::copy(&block_scores[size_t(h * bt + skip)], &block_scores[size_t(h * bt + n)],
                      &scores[size_t(h * len)]);
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* sh = &scores[size_t(h * len)];
        const float inv = 1.0f / kern.softmax_exp(sh, len);
        for (int64_t j = 0; j < len; ++j) sh[j] *= inv;
      }
      float* o = out + r * c.n_heads * d + h0 * d;
      std::fill(o, o + heads * d, 0.0f);
      for (int64_t p = lo; p <= pos;) {
        const int64_t slot = p % bt, n = std::min(bt - slot, pos + 1 - p);
        const uint8_t* vt = cache_region(s.blocks[size_t(p / bt)], layer, 1, g);
        const float* ph = &scores[size_t(p - lo)];
        switch (kv_dtype) {
          case KvDType::kF16:
            kern.accumulate_f16(ph, len, heads, reinterpret_cast<const uint16_t*>(vt) + slot * d, n, d, o);
            break;
          case KvDType::kI8: {
            // The value rows' scales go into the probabilities, which only this block's pass reads after.
            const float* vscale = reinterpret_cast<const float*>(vt + bt * d) + slot;
            for (int64_t h = 0; h < heads; ++h)
              for (int64_t j = 0; j < n; ++j) scores[size_t(h * len + p - lo + j)] *= vscale[j];
            kern.accumulate_i8(ph, len, heads, reinterpret_cast<const int8_t*>(vt) + slot * d, n, d, o);
            break;
          }
          case KvDType::kF32:
            kern.accumulate_f32(ph, len, heads, reinterpret_cast<const float*>(vt) + slot * d, n, d, o);
            break;
        }
        p += n;
      }
    }
  });
}

}  // namespace engine
}  // namespace slmops
