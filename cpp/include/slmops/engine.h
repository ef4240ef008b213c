// The native decode engine: a Llama-family decoder (Llama, Mistral's sliding window, Qwen2's
// q/k/v biases) over the layer-0 kernels, with a KV cache in fixed-size blocks shared by
// any number of sequences, and token sampling.
//
// The engine borrows every weight (dense fp32 arrays, packed quantized weights, sparse
// weights): the caller keeps them alive and unchanged while the Model is used.
//
// One call, Model::forward, advances a batch: each entry appends some tokens to one
// sequence (a whole prompt, a chunk of it, or the one token a decode step feeds) and may
// ask for logits. Entries of different sequences and lengths run through each linear as one
// matrix, so prefill, decode and continuous batching (sequences joining and leaving between
// calls) are the same code.
#pragma once

#include <cstdint>
#include <random>
#include <stdexcept>
#include <vector>

#include "slmops/qmatmul.h"
#include "slmops/quant.h"
#include "slmops/spmm.h"

namespace slmops::engine {

struct ModelConfig {
  int64_t n_layers = 0, hidden = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, intermediate = 0, vocab = 0;
  float rms_eps = 1e-6f;
  // head_dim / 2 rotary frequencies (rotate-half pairing: element i with i + head_dim / 2),
  // with the model's rope scaling (linear, llama3, ...) already folded in by the caller.
  std::vector<float> inv_freq;
  float rope_attention_scale = 1.0f;  // multiplies cos and sin (1 for plain RoPE)
  int64_t sliding_window = 0;         // attend to at most this many positions; 0: all
  int64_t max_context = 0;            // positions one sequence may hold
};

// y [M, N] = x [M, K] @ W^T + bias, W in one of the forms the kernels run.
struct Linear {
  enum class Kind : int { kNone, kDense, kQuantized, kSparseNM, kSparseCsr };
  Kind kind = Kind::kNone;
  int64_t N = 0, K = 0;
  const float* dense = nullptr;  // kDense: [N, K] fp32
  const PackedWeight* quantized = nullptr;
  QMatmulActivation activation = QMatmulActivation::kFloat;  // kQuantized
  const NMSparseWeight* nm = nullptr;
  SpmmActivation sparse_activation = SpmmActivation::kFloat;  // kSparseNM
  const CsrWeight* csr = nullptr;
  const float* bias = nullptr;  // N floats or nullptr
};

// Token id -> hidden row: a dense fp32 table or a quantized one (dequantized row by row).
struct Embedding {
  const float* dense = nullptr;  // [vocab, hidden]
  bool quantized = false;
  QuantSpec spec;
  ConstQuantStorage storage;  // quantized: [vocab, hidden] in the format's layout
};

struct LayerWeights {
  const float* attn_norm = nullptr;  // [hidden]
  Linear q, k, v, o;
  const float* mlp_norm = nullptr;  // [hidden]
  Linear gate, up, down;
};

struct ModelWeights {
  Embedding embed;
  std::vector<LayerWeights> layers;
  const float* final_norm = nullptr;  // [hidden]
  Linear head;                        // [vocab, hidden]
};

// How the KV cache stores keys and values.
enum class KvDType : int {
  kF32,  // the model's arithmetic
  kF16,  // IEEE half, as llama.cpp's default cache
  kI8,   // int8, one fp32 scale per token, head and key/value (absmax / 127): 0.53x f16's bytes at head_dim 64
};

struct CacheOptions {
  int64_t block_tokens = 16;  // positions per cache block, a multiple of 16
  int64_t max_blocks = 0;     // blocks in the pool (all sequences together)
  KvDType kv_dtype = KvDType::kF16;
  // Tokens run through the layers at once; longer batches are split (bounds activation memory).
  int64_t max_step_tokens = 512;
};

// Bytes of one cache block (keys and values of every layer) for a model.
int64_t cache_block_bytes(const ModelConfig& c, int64_t block_tokens, KvDType kv_dtype);

// The cache has no room for the tokens a forward would add. Nothing was changed.
class CacheFullError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct StepEntry {
  int64_t sequence = 0;
  const int32_t* tokens = nullptr;
  int64_t n_tokens = 0;
  bool all_logits = false;  // logits for every token of the entry, else for its last only
};

// Where forward spends its time, per phase, when profiling is on (Model::set_profiling).
enum class Phase : int { kEmbed, kQkv, kRopeCache, kAttention, kOut, kGateUp, kDown, kNormsResidual, kHead, kCount };
const char* phase_name(Phase p);

class Model {
 public:
  // Validates the shapes of every weight against the config; std::invalid_argument names the
  // first that does not fit.
  Model(ModelConfig config, ModelWeights weights, CacheOptions cache);

  const ModelConfig& config() const { return config_; }
  const CacheOptions& cache_options() const { return cache_; }

  int64_t add_sequence();
  void remove_sequence(int64_t id);  // frees its cache blocks; unknown ids are an error
  int64_t sequence_length(int64_t id) const;
  std::vector<int64_t> sequences() const;
  int64_t free_blocks() const { return int64_t(free_blocks_.size()); }
  int64_t used_blocks() const { return cache_.max_blocks - free_blocks(); }

  // Rows of logits forward writes: per entry, its token count if all_logits, else 1.
  static int64_t logit_rows(const std::vector<StepEntry>& batch);
  // Appends each entry's tokens to its sequence and writes logits [logit_rows, vocab], rows in
  // entry order. Checks everything first (known and distinct sequences, token ids in range,
  // context, cache room) and throws std::invalid_argument or CacheFullError without changing
  // any sequence.
  void forward(const std::vector<StepEntry>& batch, float* logits);

  // Wall seconds per phase summed over forward calls since profiling was turned on (zeroed
  // then; kept when it is turned off; the clock is read only while it is on).
  void set_profiling(bool on);
  const std::vector<double>& phase_seconds() const { return phase_seconds_; }

 private:
  struct Sequence {
    int64_t length = 0;
    std::vector<int32_t> blocks;
  };
  struct Row {  // one token of the current chunk
    int64_t sequence_slot;
    int64_t position;
  };
  Sequence& sequence(int64_t id);
  const Sequence& sequence(int64_t id) const;
  // The keys (kv = 0, stored transposed: [head_dim][block_tokens]) or values (kv = 1,
  // [block_tokens][head_dim]) of one head in one block and layer; in int8, followed by
  // their block_tokens fp32 scales (one per key / value row).
  uint8_t* cache_region(int32_t block, int64_t layer, int kv, int64_t head);
  void run_chunk(const std::vector<int32_t>& tokens, const std::vector<Row>& rows, const std::vector<Sequence*>& seqs,
                 const std::vector<int64_t>& logit_rows, float* logits);
  void attention(int64_t layer, const std::vector<Row>& rows, const std::vector<Sequence*>& seqs, const float* q,
                 float* out);

  ModelConfig config_;
  ModelWeights weights_;
  CacheOptions cache_;
  std::vector<uint8_t> cache_pool_;  // [layers][2][kv heads][max_blocks][region of block_tokens x head_dim]
  std::vector<int32_t> free_blocks_;
  std::vector<std::pair<int64_t, Sequence>> sequences_;  // few: a vector beats a map
  int64_t next_id_ = 0;
  bool profiling_ = false;
  std::vector<double> phase_seconds_ = std::vector<double>(size_t(Phase::kCount), 0.0);
};

// Sampling one token from a row of logits.
struct SamplingParams {
  float temperature = 0.0f;         // 0: greedy (argmax, the lowest id on ties)
  int64_t top_k = 0;                // 0: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // CTRL-style: logits of seen tokens divided (positive) or multiplied
  float presence_penalty = 0.0f;    // OpenAI-style: minus this once per seen token
  float frequency_penalty = 0.0f;   // OpenAI-style: minus this times the token's count
  uint64_t seed = 0;
};

// Validates the params (std::invalid_argument on a negative temperature, top_p outside
// (0, 1], ...).
void check_sampling(const SamplingParams& p);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Adjusts logits [vocab] in place by the penalties and returns the chosen id. `history`
  // holds the sequence so far: its first n_prompt tokens are the prompt, which the
  // repetition penalty counts and the presence and frequency penalties (OpenAI's, on the
  // generated tokens) do not. The same seed and inputs give the same ids.
  int32_t sample(float* logits, int64_t vocab, const int32_t* history, int64_t n_history, int64_t n_prompt);

 private:
  struct Candidate {
    float z;  // logit / temperature
    int32_t id;
    double weight;  // exp(z - max z), computed once per draw
  };
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<Candidate> candidates_;
  std::vector<int64_t> counts_;  // id * 2 + (generated ? 1 : 0), sorted
};

// One row of a batch for sample_rows: the row's sampler and its sequence so far.
struct SampleRow {
  Sampler* sampler;
  const int32_t* history;
  int64_t n_history, n_prompt;
};

// Samples row r of logits [rows, vocab] with rows[r]'s sampler into out[r], the rows in
// parallel (each sampler's state is its own, so the ids do not depend on the threads).
void sample_rows(const SampleRow* rows, int64_t n_rows, float* logits, int64_t vocab, int32_t* out);

// The index of the largest of z[0, n), the lowest on ties; NaN never wins (0 if all are NaN).
int64_t argmax(const float* z, int64_t n);

}  // namespace slmops::engine
