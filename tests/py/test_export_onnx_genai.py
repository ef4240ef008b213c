"""ONNX Runtime GenAI export: the graph run by onnxruntime against the torch model it came
from (prompt and a cached decode step, every supported architecture and weight format),
the folder loaded by onnxruntime-genai with greedy tokens compared to transformers'
generate on the reference teacher, and the errors raised before anything is written."""

import copy
import json

import numpy as np
import pytest
import slmops
import torch
from conftest import genai_greedy_tokens
from slmops.export import export
from slmops.export.onnx_genai import build_decoder

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# Bounds on |logits_onnx - logits_torch|, measured on the reference teacher (max |logit|
# about 15): float32 compute differs only in summation order (1.7e-5 measured); int8
# activations (accuracy_level 4) round each block of x (0.13 measured).
ATOL_FP32 = 1e-4
ATOL_INT8_ACTIVATIONS = 0.25


def _tiny(model_type: str, **overrides):
    import transformers

    cls_name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "phi3": "Phi3"}[model_type]
    config_cls = getattr(transformers, f"{cls_name}Config")
    model_cls = getattr(transformers, f"{cls_name}ForCausalLM")
    kw = dict(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    kw.update(overrides)
    torch.manual_seed(0)
    model = model_cls(config_cls(**kw)).eval()
    with torch.no_grad():  # random biases (zero at init) so that a dropped bias shows
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    return model


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(sess, cfg, ids, past=None):
    """Logits and present KV for ids after an optional past (a dict of present tensors)."""
    n_kv = cfg.num_key_value_heads
    head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    past_len = 0 if past is None else next(iter(past.values())).shape[2]
    feeds = {
        "input_ids": ids.astype(np.int64),
        "attention_mask": np.ones((ids.shape[0], past_len + ids.shape[1]), np.int64),
    }
    for i in range(cfg.num_hidden_layers):
        for kv in ("key", "value"):
            empty = np.zeros((ids.shape[0], n_kv, 0, head), np.float32)
            feeds[f"past_key_values.{i}.{kv}"] = empty if past is None else past[f"present.{i}.{kv}"]
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feeds), strict=True))
    return out.pop("logits"), out


FLOAT_TABLES = {"lm_head": "float", "embedding": "float"}


def _with_vocab_tables(model, lm_head, embedding):
    """A copy whose lm_head and embedding hold what the export writes for them: the float
    weights round-tripped through our quantizer (int4 asymmetric, int8; the exporter's blocks)."""
    from slmops.export.onnx_genai import VOCAB_QUANT_OPTIONS
    from slmops.ops.quant import quantize

    def rounded(w, fmt):
        if fmt == "float":
            return w.detach().clone()
        return torch.from_numpy(
            np.asarray(quantize(w.detach().numpy(), fmt, **VOCAB_QUANT_OPTIONS[fmt]).dequantize(), np.float32)
        )

    ref = copy.deepcopy(model)
    head, table = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    ref.get_output_embeddings().weight = torch.nn.Parameter(rounded(head, lm_head))
    ref.get_input_embeddings().weight = torch.nn.Parameter(rounded(table, embedding))
    return ref


def _check_against_torch(model, accuracy_level=1, atol=ATOL_FP32, seq=20, **options):
    """Prompt of seq-1 tokens, then one cached step: both must match torch's logits. Float
    vocabulary tables unless ``options`` say otherwise (then against ``_with_vocab_tables``)."""
    options = {**FLOAT_TABLES, **options}
    sess = _session(build_decoder(model, accuracy_level, **options))
    if options != FLOAT_TABLES:
        model = _with_vocab_tables(model, options["lm_head"], options["embedding"])
    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, size=(1, seq))
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    prompt_logits, present = _run(sess, model.config, ids[:, :-1])
    step_logits, _ = _run(sess, model.config, ids[:, -1:], past=present)
    np.testing.assert_allclose(prompt_logits, ref[:, :-1], rtol=0, atol=atol)
    np.testing.assert_allclose(step_logits, ref[:, -1:], rtol=0, atol=atol)


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True, "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                                    "rope_theta": 500.0}}),
        ("mistral", {"sliding_window": 6}),
        ("qwen2", {}),
        ("phi3", {}),
    ],
    ids=["llama", "llama-tied-linear-rope", "mistral-window", "qwen2-bias", "phi3-fused"],
)  # fmt: skip
def test_float_graph_matches_torch(model_type, overrides):
    _check_against_torch(_tiny(model_type, **overrides))


@pytest.mark.parametrize(
    ("format", "opts"),
    [
        ("int4", {"group_size": 32, "symmetric": False}),
        ("int4", {"group_size": 16, "symmetric": True}),
        ("int8", {}),
        ("q4_0", {}),
        ("q8_0", {}),
    ],
)
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "phi3"])
def test_quantized_graph_matches_our_kernels(model_type, format, opts):
    """MatMulNBits with our codes computes what QuantLinear computes on our kernels."""
    model = _tiny(model_type)
    summary = slmops.quantize_model(model, format=format, **opts)
    assert summary.replaced and not [k for k, v in summary.skipped.items() if v != "matches skip"]
    _check_against_torch(model)


@pytest.mark.parametrize("hidden", [64, 192], ids=["one-padded-block", "last-block-padded"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize(
    ("lm_head", "embedding"), [("int8", "int8"), ("int4", "int4"), ("int4", "float"), ("float", "int8")]
)
def test_vocab_tables_quantized_at_export_match_their_rounded_weights(tied, lm_head, embedding, hidden):
    """MatMulNBits (lm_head) and GatherBlockQuantized (embedding) compute with exactly the
    weights our quantizer rounds them to, tied or not, over a quantized body; int8's blocks
    of 128 pad the last block when the width is no multiple of it (SmolLM2: 576)."""
    model = _tiny("llama", tie_word_embeddings=tied, hidden_size=hidden)
    slmops.quantize_model(model, format="int4", group_size=32)
    _check_against_torch(model, lm_head=lm_head, embedding=embedding)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize(("format", "opts"), [("int4", {"group_size": 16, "symmetric": False}), ("q8_0", {})])
def test_fused_projections_compute_what_separate_ones_do(model_type, format, opts):
    """q/k/v and gate/up stacked into one MatMulNBits each (biases too) give the logits of the
    unfused graph; fewer nodes."""
    model = _tiny(model_type)
    slmops.quantize_model(model, format=format, **opts)
    ids = np.random.default_rng(1).integers(3, model.config.vocab_size, size=(1, 12))
    logits, nodes = [], []
    for fuse in (True, False):
        proto = build_decoder(model, 1, fuse_projections=fuse, **FLOAT_TABLES)
        nodes.append(sum(n.op_type == "MatMulNBits" for n in proto.graph.node))
        logits.append(_run(_session(proto), model.config, ids)[0])
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-5)
    assert nodes == [4 * 2, 7 * 2]  # qkv, o, gate_up, down against q, k, v, o, gate, up, down
    if format == "int4":  # a symmetric k_proj among asymmetric q/v: ORT's default zero point written out
        symmetric = _tiny(model_type)
        slmops.quantize_model(symmetric, format="int4", group_size=16, symmetric=True)
        model.model.layers[0].self_attn.k_proj = symmetric.model.layers[0].self_attn.k_proj
        _check_against_torch(model)


def test_int8_activation_level_stays_within_its_bound():
    model = _tiny("qwen2")
    slmops.quantize_model(model, format="int4", group_size=32)
    _check_against_torch(model, accuracy_level=4, atol=ATOL_INT8_ACTIVATIONS)


@pytest.fixture(scope="module")
def teacher_int4(tmp_path_factory):
    model, tok = slmops.zoo.load("kjv-teacher")
    slmops.quantize_model(model, format="int4", group_size=32, symmetric=False)
    out = tmp_path_factory.mktemp("genai") / "kjv-teacher-int4"
    manifest = export(model, "onnx-genai", out, tokenizer=tok, accuracy_level=1)  # default tables: int8
    return _with_vocab_tables(model, "int8", "int8"), tok, out, manifest


def test_folder_has_what_genai_and_foundry_read(teacher_int4):
    model, tok, out, manifest = teacher_int4
    names = {f["path"] for f in manifest["files"]}
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "tokenizer_config.json",
            "inference_model.json"} <= names  # fmt: skip
    assert "MatMulNBits" in manifest["ops"] and "GroupQueryAttention" in manifest["ops"]
    cfg = json.loads((out / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    assert dec["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert dec["outputs"]["present_value_names"] == "present.%d.value"
    assert (dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]) == (6, 2, 64)
    assert cfg["model"]["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert cfg["search"]["past_present_share_buffer"] is True
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == tok.chat_template
    inference = json.loads((out / "inference_model.json").read_text())
    assert inference["Name"] == "kjv-teacher-int4"
    prompt = inference["PromptTemplate"]["prompt"].replace("{Content}", "Who made light?")
    assert prompt == tok.apply_chat_template(
        [{"role": "user", "content": "Who made light?"}], tokenize=False, add_generation_prompt=True
    )
    # The weights are the quantized codes: the data file is about int4-sized, not float.
    sizes = {f["path"]: f["bytes"] for f in manifest["files"]}
    linear_params = sum(m.in_features * m.out_features for m in model.modules() if hasattr(m, "qweight"))
    assert sizes["model.onnx.data"] < 4 * model.config.vocab_size * 256 + linear_params * 0.7


def test_genai_greedy_tokens_equal_transformers_generate(teacher_int4):
    """onnxruntime-genai loads the folder, tokenizes like transformers and, greedy, emits
    the tokens transformers' generate emits from the same quantized weights."""
    og = pytest.importorskip("onnxruntime_genai")
    model, tok, out, _ = teacher_int4
    gm = og.Model(str(out))
    text = "And God said, Let there be light"
    ids = tok(text)["input_ids"]
    assert [int(i) for i in og.Tokenizer(gm).encode(text)] == ids
    new = 48
    got = genai_greedy_tokens(gm, ids, new)
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False, eos_token_id=None)
    assert got == ref[0, len(ids) :].tolist()


def test_unsupported_input_fails_before_writing(tmp_path):
    model = _tiny("llama")
    tok = slmops.zoo.train_tokenizer(["a b c"] * 5, vocab_size=280)
    nf4 = copy.deepcopy(model)
    slmops.quantize_model(nf4, format="nf4")
    with pytest.raises(ValueError, match="model.layers.0.self_attn.q_proj: MatMulNBits holds"):
        export(nf4, "onnx-genai", tmp_path / "a", tokenizer=tok)
    with pytest.raises(ValueError, match="accuracy_level must be one of"):
        export(model, "onnx-genai", tmp_path / "b", tokenizer=tok, accuracy_level=5)
    with pytest.raises(ValueError, match="lm_head must be one of"):
        export(model, "onnx-genai", tmp_path / "b", tokenizer=tok, lm_head="q4_0")
    with pytest.raises(ValueError, match="embedding must be one of"):
        export(model, "onnx-genai", tmp_path / "b", tokenizer=tok, embedding="int2")
    dynamic = _tiny("llama", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(ValueError, match="changes with the sequence length"):
        export(dynamic, "onnx-genai", tmp_path / "c", tokenizer=tok)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320))
    with pytest.raises(ValueError, match="onnx-genai export supports"):
        export(gpt2, "onnx-genai", tmp_path / "d", tokenizer=tok)
    assert list(tmp_path.iterdir()) == []
