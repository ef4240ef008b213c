// slmops._C: the native decode engine (engine.h) and its sampler. The Python side
// (slmops.engine) hands over every weight as an array or a pack; the EngineModel keeps them
// alive for as long as it lives.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "packs.h"
#include "slmops/engine.h"

namespace slmops::bindings {
namespace {

using engine::Linear;

constexpr Choice<QMatmulActivation> kActivations[] = {{"float", QMatmulActivation::kFloat},
                                                      {"int8", QMatmulActivation::kInt8},
                                                      {"int8_row", QMatmulActivation::kInt8Row}};
constexpr Choice<SpmmActivation> kSparseActivations[] = {{"float", SpmmActivation::kFloat},
                                                         {"int8", SpmmActivation::kInt8}};
constexpr Choice<engine::KvDType> kKvDTypes[] = {
    {"float32", engine::KvDType::kF32}, {"float16", engine::KvDType::kF16}, {"int8", engine::KvDType::kI8}};

class PyEngineModel {
 public:
  PyEngineModel(const py::dict& config, const py::dict& embed, const py::list& layers, py::handle final_norm,
                const py::dict& head, int64_t block_tokens, int64_t max_blocks, int64_t max_step_tokens,
                const std::string& kv_dtype) {
    engine::ModelConfig c;
    c.n_layers = config["n_layers"].cast<int64_t>();
    c.hidden = config["hidden"].cast<int64_t>();
    c.n_heads = config["n_heads"].cast<int64_t>();
    c.n_kv_heads = config["n_kv_heads"].cast<int64_t>();
    c.head_dim = config["head_dim"].cast<int64_t>();
    c.intermediate = config["intermediate"].cast<int64_t>();
    c.vocab = config["vocab"].cast<int64_t>();
    c.rms_eps = config["rms_eps"].cast<float>();
    c.inv_freq = config["inv_freq"].cast<std::vector<float>>();
    c.rope_attention_scale = config["rope_attention_scale"].cast<float>();
    c.sliding_window = config["sliding_window"].cast<int64_t>();
    c.max_context = config["max_context"].cast<int64_t>();
    if (int64_t(py::len(layers)) != c.n_layers)
      throw py::value_error("config says " + std::to_string(c.n_layers) + " layers, got " +
                            std::to_string(py::len(layers)));

    engine::ModelWeights w;
    if (embed.contains("dense")) {
      w.embed.dense = floats(embed["dense"], "embed", c.vocab * c.hidden);
    } else {
      w.embed.quantized = true;
      w.embed.spec = make_spec(embed["format"].cast<std::string>(), embed["group_size"].cast<int64_t>(),
                               embed["symmetric"].cast<bool>());
      const QuantLayout L = quant_layout(w.embed.spec, c.hidden);
      StorageArgs s = storage_args(w.embed.spec, L, c.vocab, embed["data"], embed["scales"], embed["zero_points"],
                                   false, py::none());
      for (TensorArg* t : {&s.data, &s.scales, &s.zero_points}) {
        if (t->data) expect_cpu(*t);
        keep_.push_back(t->owner);
      }
      w.embed.storage = {static_cast<const uint8_t*>(s.data.data), static_cast<const float*>(s.scales.data),
                         static_cast<const uint8_t*>(s.zero_points.data)};
    }
    for (size_t i = 0; i < size_t(c.n_layers); ++i) {
      const py::dict L = layers[i].cast<py::dict>();
      engine::LayerWeights lw;
      const std::string p = "layers[" + std::to_string(i) + "].";
      lw.attn_norm = floats(L["attn_norm"], p + "attn_norm", c.hidden);
      lw.mlp_norm = floats(L["mlp_norm"], p + "mlp_norm", c.hidden);
      lw.q = linear(L["q"], p + "q");
      lw.k = linear(L["k"], p + "k");
      lw.v = linear(L["v"], p + "v");
      lw.o = linear(L["o"], p + "o");
      lw.gate = linear(L["gate"], p + "gate");
      lw.up = linear(L["up"], p + "up");
      lw.down = linear(L["down"], p + "down");
      w.layers.push_back(lw);
    }
    w.final_norm = floats(final_norm, "final_norm", c.hidden);
    w.head = linear(head, "head");
    engine::CacheOptions cache{block_tokens, max_blocks, parse_choice(kv_dtype, kKvDTypes, "kv_dtype"),
                               max_step_tokens};
    try {
      model_ = std::make_unique<engine::Model>(std::move(c), std::move(w), cache);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }

  engine::Model& model() { return *model_; }

  py::array_t<float> forward(const std::vector<std::tuple<int64_t, py::handle, bool>>& entries) {
    std::vector<engine::StepEntry> batch;
    std::vector<TensorArg> tokens;  // keeps each token array alive through the step
    tokens.reserve(entries.size());
    for (const auto& [seq, toks, all_logits] : entries) {
      tokens.push_back(tensor_arg(toks, "tokens"));
      TensorArg& t = tokens.back();
      expect_cpu(t);
      expect_type(t, {ElemType::kI32});
      expect_ndim(t, 1, "[n_tokens]");
      batch.push_back({seq, static_cast<const int32_t*>(t.data), t.shape[0], all_logits});
    }
    const int64_t rows = engine::Model::logit_rows(batch);
    py::array_t<float> logits({rows, model_->config().vocab});
    float* dst = logits.mutable_data();
    run_released([&] { model_->forward(batch, dst); });
    return logits;
  }

 private:
  const float* floats(py::handle obj, const std::string& name, int64_t numel) {
    TensorArg t = tensor_arg(obj, name.c_str());
    expect_cpu(t);
    expect_type(t, {ElemType::kF32});
    expect_numel(t, numel, name.c_str());
    keep_.push_back(t.owner);
    return static_cast<const float*>(t.data);
  }

  Linear linear(py::handle obj, const std::string& name) {
    const py::dict d = obj.cast<py::dict>();
    Linear l;
    l.N = d["N"].cast<int64_t>();
    l.K = d["K"].cast<int64_t>();
    if (d.contains("dense")) {
      l.kind = Linear::Kind::kDense;
      l.dense = floats(d["dense"], name + ".dense", l.N * l.K);
    } else if (d.contains("packed")) {
      l.kind = Linear::Kind::kQuantized;
      auto& pw = d["packed"].cast<PyPackedWeight&>();
      pw.check();
      l.quantized = &pw.w;
      l.activation = parse_choice(d["activation"].cast<std::string>(), kActivations, "activation");
      keep_.push_back(d["packed"]);
    } else if (d.contains("nm")) {
      l.kind = Linear::Kind::kSparseNM;
      auto& nm = d["nm"].cast<PyNMWeight&>();
      nm.check();
      l.nm = &nm.w;
      l.sparse_activation = parse_choice(d["activation"].cast<std::string>(), kSparseActivations, "activation");
      keep_.push_back(d["nm"]);
    } else if (d.contains("csr")) {
      l.kind = Linear::Kind::kSparseCsr;
      auto& csr = d["csr"].cast<PyCsrWeight&>();
      csr.check();
      l.csr = &csr.w;
      keep_.push_back(d["csr"]);
    } else {
      throw py::value_error(name + ": a linear needs one of 'dense', 'packed', 'nm' or 'csr'");
    }
    if (d.contains("bias") && !d["bias"].is_none()) l.bias = floats(d["bias"], name + ".bias", l.N);
    return l;
  }

  std::vector<py::object> keep_;  // every array and pack the model borrows
  std::unique_ptr<engine::Model> model_;
};

class PySampler {
 public:
  explicit PySampler(const engine::SamplingParams& p) : sampler_(make(p)) {}
  int32_t sample(py::handle logits, py::handle history, int64_t n_prompt) {
    TensorArg z = tensor_arg(logits, "logits");
    expect_cpu(z);
    expect_type(z, {ElemType::kF32});
    expect_ndim(z, 1, "[vocab]");
    expect_writeable(z);
    TensorArg h = tensor_arg(history, "history");
    expect_cpu(h);
    expect_type(h, {ElemType::kI32});
    expect_ndim(h, 1, "[n]");
    int32_t out = 0;
    run_released([&] {
      out = sampler_.sample(static_cast<float*>(z.data), z.shape[0], static_cast<const int32_t*>(h.data), h.shape[0],
                            n_prompt);
    });
    return out;
  }
  engine::Sampler& native() { return sampler_; }

 private:
  static engine::Sampler make(const engine::SamplingParams& p) {
    try {
      return engine::Sampler(p);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }
  engine::Sampler sampler_;
};

// Row r of logits [rows, vocab] with samplers[r] and histories[r] (its first n_prompts[r]
// tokens the prompt): one call a step for the whole batch, the rows in parallel.
py::array_t<int32_t> sample_rows(const py::list& samplers, py::handle logits, const py::list& histories,
                                 const std::vector<int64_t>& n_prompts) {
  TensorArg z = tensor_arg(logits, "logits");
  expect_cpu(z);
  expect_type(z, {ElemType::kF32});
  expect_ndim(z, 2, "[rows, vocab]");
  expect_writeable(z);
  const int64_t rows = z.shape[0];
  if (int64_t(py::len(samplers)) != rows || int64_t(py::len(histories)) != rows || int64_t(n_prompts.size()) != rows)
    throw py::value_error("sample_rows: samplers, histories and n_prompts need one entry per logits row (" +
                          std::to_string(rows) + ")");
  std::vector<engine::SampleRow> batch(static_cast<size_t>(rows));
  std::vector<TensorArg> keep;  // the histories' buffers, alive until the call returns
  keep.reserve(batch.size());
  for (int64_t r = 0; r < rows; ++r) {
    TensorArg h = tensor_arg(histories[size_t(r)], "history");
    expect_cpu(h);
    expect_type(h, {ElemType::kI32});
    expect_ndim(h, 1, "[n]");
    keep.push_back(h);
    batch[size_t(r)] = {&samplers[size_t(r)].cast<PySampler&>().native(), static_cast<const int32_t*>(h.data),
                        h.shape[0], n_prompts[size_t(r)]};
  }
  py::array_t<int32_t> out(rows);
  int32_t* o = out.mutable_data();
  run_released([&] { engine::sample_rows(batch.data(), rows, static_cast<float*>(z.data), z.shape[1], o); });
  return out;
}

}  // namespace

void register_engine(py::module_& m) {
  py::register_exception<engine::CacheFullError>(m, "CacheFullError", PyExc_RuntimeError);
  py::class_<PyEngineModel>(m, "EngineModel", "A Llama-family decoder on the slmops kernels with a block KV cache.")
      .def(py::init<const py::dict&, const py::dict&, const py::list&, py::handle, const py::dict&, int64_t, int64_t,
                    int64_t, const std::string&>(),
           py::arg("config"), py::arg("embed"), py::arg("layers"), py::arg("final_norm"), py::arg("head"),
           py::arg("block_tokens"), py::arg("max_blocks"), py::arg("max_step_tokens"), py::arg("kv_dtype"))
      .def("add_sequence", [](PyEngineModel& e) { return e.model().add_sequence(); })
      .def(
          "remove_sequence", [](PyEngineModel& e, int64_t id) { run_released([&] { e.model().remove_sequence(id); }); },
          py::arg("sequence"))
      .def(
          "sequence_length",
          [](PyEngineModel& e, int64_t id) {
            int64_t n = 0;
            run_released([&] { n = e.model().sequence_length(id); });
            return n;
          },
          py::arg("sequence"))
      .def_property_readonly("sequences", [](PyEngineModel& e) { return e.model().sequences(); })
      .def_property_readonly("free_blocks", [](PyEngineModel& e) { return e.model().free_blocks(); })
      .def_property_readonly("used_blocks", [](PyEngineModel& e) { return e.model().used_blocks(); })
      .def_property_readonly("max_blocks", [](PyEngineModel& e) { return e.model().cache_options().max_blocks; })
      .def_property_readonly("block_tokens", [](PyEngineModel& e) { return e.model().cache_options().block_tokens; })
      .def(
          "set_profiling", [](PyEngineModel& e, bool on) { e.model().set_profiling(on); }, py::arg("on"),
          "Turns the per-phase clock on (zeroed) or off.")
      .def_property_readonly("profile",
                             [](PyEngineModel& e) {
                               py::dict d;
                               const auto& secs = e.model().phase_seconds();
                               for (int p = 0; p < int(engine::Phase::kCount); ++p)
                                 d[engine::phase_name(engine::Phase(p))] = secs[size_t(p)];
                               return d;
                             })
      .def("forward", &PyEngineModel::forward, py::arg("entries"),
           "entries: (sequence, int32 tokens, all_logits) per sequence; returns logits [rows, vocab]");
  m.def("engine_cache_block_bytes",
        [](int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t block_tokens, const std::string& kv_dtype) {
          engine::ModelConfig c;
          c.n_layers = n_layers;
          c.n_kv_heads = n_kv_heads;
          c.head_dim = head_dim;
          return engine::cache_block_bytes(c, block_tokens, parse_choice(kv_dtype, kKvDTypes, "kv_dtype"));
        });
  py::class_<PySampler>(m, "Sampler", "Penalties, temperature, top-k, top-p and min-p, then one seeded draw.")
      .def(py::init([](float temperature, int64_t top_k, float top_p, float min_p, float repetition_penalty,
                       float presence_penalty, float frequency_penalty, uint64_t seed) {
             return std::make_unique<PySampler>(engine::SamplingParams{
                 temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty, seed});
           }),
           py::arg("temperature") = 0.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f, py::arg("min_p") = 0.0f,
           py::arg("repetition_penalty") = 1.0f, py::arg("presence_penalty") = 0.0f,
           py::arg("frequency_penalty") = 0.0f, py::arg("seed") = 0)
      .def("sample", &PySampler::sample, py::arg("logits"), py::arg("history"), py::arg("n_prompt"),
           "The next token id; logits [vocab] float32 are adjusted in place by the penalties. history: the "
           "sequence so far (int32), its first n_prompt tokens the prompt.");
  m.def("sample_rows", &sample_rows, py::arg("samplers"), py::arg("logits"), py::arg("histories"), py::arg("n_prompts"),
        "Token ids int32 [rows]: row r of logits [rows, vocab] (adjusted in place by the penalties) sampled by "
        "samplers[r] over histories[r]; the rows in parallel.");
}

}  // namespace slmops::bindings
