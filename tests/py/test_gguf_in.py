"""GGUF files in: a llama.cpp model file loads as a float transformers model with its
tokenizer (slmops.models.load_model, every CLI -m, run configs), and a GGUF that slmops
exported loads back to the model it came from. Our reader (the default) gives what
transformers' GGUF loader gives, bit for bit: transformers is the reference here."""

from __future__ import annotations

import copy
import filecmp
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slmops
import torch
from slmops.models import gguf as gguf_in
from slmops.models import is_gguf_file, load_gguf, load_model
from slmops.nn import QuantLinear

TEXT = "In the beginning God created the heaven and the earth. And the earth was without form"
# what tokenizers get wrong first: byte fallback, pre-tokenizer splits, whitespace runs
TEXTS = [
    TEXT,
    "Emojis 😀🎉👍🏽🇫🇷 and CJK: 中文字符，日本語のテキスト、한국어 문장",
    "tabs\tand\t\ttabs; runs of spaces:  two   three    four",
    "\n\nnewlines\n\n\nand\r\nCRLF  \n \t \n",
    "accents: café naïve Ångström São Paulo Zürich ñ ß œ ǅ",
    "  leading and trailing spaces  ",
    "<|im_start|>user\nspecial tokens inside text<|im_end|>",
]
MESSAGES = [
    {"role": "system", "content": "Answer in one line."},
    {"role": "user", "content": "What is the capital of France? 🇫🇷  Réponds\tvite."},
]
SMOLLM2 = Path.home() / ".cache/slmops/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def teacher():
    return slmops.zoo.load("kjv-teacher")


@pytest.fixture(scope="module")
def float_gguf(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "f32"
    slmops.export_model(teacher[0], "gguf", out, teacher[1], default_type="f32")
    return out / "model.gguf"


def test_a_float_gguf_loads_back_to_the_same_logits_and_token_ids(teacher, float_gguf):
    model, tokenizer = teacher
    loaded, loaded_tok = load_model(float_gguf)
    assert type(loaded).__name__ == "LlamaForCausalLM" and not loaded.training
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    assert torch.equal(loaded_tok(TEXT, return_tensors="pt").input_ids, ids)
    assert loaded_tok.chat_template == tokenizer.chat_template
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)  # f32 storage: exact


@pytest.mark.parametrize("format", ["q8_0", "q4_0"])
def test_ggml_blocks_load_back_exactly(teacher, tmp_path, format):
    q = copy.deepcopy(teacher[0])
    slmops.quantize_model(q, format=format, progress=False)
    slmops.export_model(q, "gguf", tmp_path / "q", teacher[1])
    loaded, _ = load_model(tmp_path / "q" / "model.gguf")
    name = "model.layers.0.mlp.down_proj"
    layer = q.get_submodule(name)
    assert isinstance(layer, QuantLinear) and layer.qweight.format == format
    # the dequantized blocks bit for bit: our kernel's values are what the file holds
    assert torch.equal(loaded.get_submodule(name).weight, torch.as_tensor(layer.qweight.dequantize()))
    ids = teacher[1](TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, q(ids).logits, rtol=1e-4, atol=1e-4)


def test_a_workflow_takes_a_gguf_and_converts_it_once(float_gguf, tmp_path):
    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "slmops.cli", "quantize", "-m", str(float_gguf), "-f", "int8", "-o",
             str(tmp_path / "out"), "--overwrite", "-q"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    first = run()
    assert first.returncode == 0, first.stderr[-2000:]
    converted = list((tmp_path / "out" / "cache").glob("gguf-*"))
    assert len(converted) == 1 and (converted[0] / "config.json").is_file()
    stamp = (converted[0] / "model.safetensors").stat().st_mtime_ns
    assert run().returncode == 0
    assert (converted[0] / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rewritten
    history = json.loads((tmp_path / "out" / "run_history.json").read_text())
    assert history["input"]["model"] == str(float_gguf)


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path, float_gguf):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    assert is_gguf_file(fake)
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_model(fake)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(float_gguf.read_bytes()[:4096])  # the header, no tensors
    with pytest.raises((ValueError, OSError)):
        load_model(cut)
    run = subprocess.run(
        [sys.executable, "-m", "slmops.cli", "evaluate", "-m", str(cut), "--metrics", "memory"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr and "cut.gguf" in run.stderr


# -- our reader against transformers' GGUF loader -----------------------------------------


def ours(path, dtype=None):
    """Our reader's load, failing if it handed the file to transformers' loader."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf_in, "_load_transformers", lambda *a: pytest.fail(f"{path} was handed over"))
        return load_gguf(path, dtype, reader="slmops")


def assert_same_load(mine, reference, tmp_path):
    """Same model class, config, weights (bit for bit), logits and tokenizer."""
    (model, tok), (ref, ref_tok) = mine, reference
    assert type(model) is type(ref) and not model.training
    assert model.config.to_dict() == ref.config.to_dict()
    assert model.generation_config.to_dict() == ref.generation_config.to_dict()
    weights, ref_weights = model.state_dict(), ref.state_dict()
    assert weights.keys() == ref_weights.keys()
    for name, w in ref_weights.items():
        assert weights[name].dtype == w.dtype and torch.equal(weights[name], w), name
    ids = ref_tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert_same_tokenizer(tok, ref_tok, tmp_path)


def assert_same_tokenizer(tok, ref_tok, tmp_path):
    assert type(tok) is type(ref_tok)
    for text in TEXTS:
        assert tok(text).input_ids == ref_tok(text).input_ids, text
        ids = ref_tok(text).input_ids
        assert tok.decode(ids) == ref_tok.decode(ids)
    assert tok.chat_template == ref_tok.chat_template
    if ref_tok.chat_template:
        prompt = ref_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
        assert tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == prompt
        assert tok(prompt).input_ids == ref_tok(prompt).input_ids
    assert tok.special_tokens_map == ref_tok.special_tokens_map
    # what save_pretrained writes (tokenizer.json, tokenizer_config.json, the template) is the same
    tok.save_pretrained(tmp_path / "ours")
    ref_tok.save_pretrained(tmp_path / "ref")
    saved = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert saved == sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert all(filecmp.cmp(tmp_path / "ours" / f, tmp_path / "ref" / f, shallow=False) for f in saved)


def test_our_reader_equals_transformers_on_a_float_gguf(float_gguf, tmp_path):
    assert_same_load(ours(float_gguf), load_gguf(float_gguf, reader="transformers"), tmp_path)
    # and in another dtype: dequantized once, then cast, as transformers does
    mine = ours(float_gguf, torch.bfloat16)[0].state_dict()
    ref = load_gguf(float_gguf, torch.bfloat16, reader="transformers")[0].state_dict()
    assert all(mine[k].dtype == torch.bfloat16 and torch.equal(mine[k], ref[k]) for k in ref)


@pytest.mark.parametrize(
    "export",
    [
        {"quantize": "q8_0"},
        {"quantize": "q4_0"},
        # our k-quant kernels next to f16 embeddings and f32 norms
        {"tensor_types": {"blk.*.attn_*": "q6_k", "blk.*.ffn_*": "q4_k"}, "default_type": "f16"},
    ],
    ids=["q8_0", "q4_0", "k-quants+f16"],
)
def test_our_reader_equals_transformers_on_exported_ggufs(teacher, tmp_path, export):
    model, tok = teacher
    options = dict(export)
    if "quantize" in options:
        model = copy.deepcopy(model)
        slmops.quantize_model(model, format=options.pop("quantize"), progress=False)
    slmops.export_model(model, "gguf", tmp_path / "q", tok, **options)
    path = tmp_path / "q" / "model.gguf"
    assert_same_load(ours(path), load_gguf(path, reader="transformers"), tmp_path)


def test_a_llama_gguf_named_mistral_is_the_mistral_transformers_configures(teacher, tmp_path):
    """transformers' rule: a llama file whose general.name is "mistral" is a Mistral model. Its
    config reader follows it; its weight loader (5.25) fails on such a file, so the weights are
    compared with the same export under another name, which it loads as Llama."""
    from transformers import AutoConfig, AutoTokenizer

    for name in ("mistral", "model"):
        slmops.export_model(teacher[0], "gguf", tmp_path / name, teacher[1], default_type="q8_0", name=name)
    model, tok = ours(tmp_path / "mistral" / "model.gguf")
    assert type(model).__name__ == "MistralForCausalLM"
    config = AutoConfig.from_pretrained(tmp_path / "mistral", gguf_file="model.gguf").to_dict()
    assert model.config.to_dict() == {**config, "dtype": "float32"}
    ref, ref_tok = load_gguf(tmp_path / "model" / "model.gguf", reader="transformers")
    weights = model.state_dict()
    assert all(torch.equal(weights[k], w) for k, w in ref.state_dict().items())
    ids = ref_tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert_same_tokenizer(
        tok, AutoTokenizer.from_pretrained(tmp_path / "mistral", gguf_file="model.gguf"), tmp_path
    )


# a sentencepiece vocabulary (llama.cpp's "llama" tokenizer: scores, byte fallback, no merges)
_PIECES = [*"▁etaoinshrdlucmfwypvbgkjqxzTAIGNS0123456789.,!?'", "▁t", "▁th", "▁the", "he", "in", "▁a",
           "an", "▁an", "nd", "▁and", "▁in", "er", "▁b", "▁be", "▁beg", "ing", "▁G", "▁God", "re", "at",
           "ed", "▁w", "as", "▁was", "ä", "é", "中", "文"]  # fmt: skip
_SPM_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"


def _add_sentencepiece_vocabulary(writer):
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *dict.fromkeys(_PIECES)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259))  # unknown, control, byte
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(_SPM_TEMPLATE)
    return len(tokens)


def _write_tiny(path, arch, tokenizer=None):
    """A tiny GGUF written with the gguf package: ``arch`` "qwen2" (q/k/v biases, no q/k
    permutation) or "llama", an untied output, and one tensor type of each kind our reader
    computes itself or hands to the gguf package (f32, f16, bf16, q8_0, q4_1, q5_0). The
    vocabulary is ``tokenizer``'s (byte-level BPE) or, without one, a sentencepiece one."""
    import gguf
    from slmops.export.gguf import _add_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    q = gguf.GGMLQuantizationType
    writer = gguf.GGUFWriter(str(path), arch)
    vocab = len(tokenizer) if tokenizer is not None else _add_sentencepiece_vocabulary(writer)
    if tokenizer is not None:
        _add_tokenizer(writer, tokenizer, vocab)
    config = AutoConfig.for_model(
        arch, vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=1e6,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0.5, 0.2)
    writer.add_name(f"tiny {arch}")
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-6)

    def add(name, t, kind):
        a = t.detach().float().numpy()
        if kind == "f32":
            writer.add_tensor(name, a)
        elif kind == "f16":
            writer.add_tensor(name, a.astype(np.float16))
        elif kind == "bf16":
            bits = t.detach().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)
            writer.add_tensor(name, bits, raw_dtype=q.BF16)
        else:
            writer.add_tensor(name, gguf.quants.quantize(a, q[kind]), raw_dtype=q[kind])

    add("token_embd.weight", model.model.embed_tokens.weight, "f16")
    add("output.weight", model.lm_head.weight, "Q4_1")
    add("output_norm.weight", model.model.norm.weight, "f32")
    kinds = {"q": "bf16", "k": "Q8_0", "v": "Q5_0", "o": "Q4_1"}
    for i, layer in enumerate(model.model.layers):
        for x, kind in kinds.items():
            proj = getattr(layer.self_attn, f"{x}_proj")
            add(f"blk.{i}.attn_{'output' if x == 'o' else x}.weight", proj.weight, kind)
            if proj.bias is not None:
                add(f"blk.{i}.attn_{x}.bias", proj.bias, "f32")
        for x, kind in (("gate", "Q8_0"), ("up", "f16"), ("down", "Q4_1")):
            add(f"blk.{i}.ffn_{x}.weight", getattr(layer.mlp, f"{x}_proj").weight, kind)
        add(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight, "f32")
        add(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight, "f32")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("arch, vocabulary", [("qwen2", "byte-level BPE"), ("llama", "sentencepiece")])
def test_our_reader_equals_transformers_on_written_ggufs(teacher, tmp_path, arch, vocabulary):
    path = tmp_path / arch / "tiny.gguf"
    path.parent.mkdir()
    _write_tiny(path, arch, teacher[1] if vocabulary == "byte-level BPE" else None)
    mine = ours(path)
    assert type(mine[0]).__name__ == {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    assert_same_load(mine, load_gguf(path, reader="transformers"), tmp_path)


@pytest.mark.slow
def test_our_reader_equals_transformers_on_smollm2(tmp_path):
    """The real model (Q4_1 blocks, a Q8_0 embedding, 49152 tokens and 48900 merges)."""
    if not SMOLLM2.is_file():
        pytest.skip(f"{SMOLLM2} is not cached (slmops zoo fetch smollm2-135m-instruct)")
    assert_same_load(ours(SMOLLM2), load_gguf(SMOLLM2, reader="transformers"), tmp_path)


def test_what_our_reader_does_not_cover_goes_to_transformers(float_gguf, monkeypatch, caplog):
    monkeypatch.setattr(gguf_in, "_ARCHITECTURES", {"qwen2": ("qwen2", False)})
    with caplog.at_level(logging.INFO, logger=gguf_in.__name__):
        model, _ = load_gguf(float_gguf)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert "does not cover its architecture 'llama'; using transformers' loader" in caplog.text


def test_an_unknown_architecture_or_reader_is_a_clear_error(float_gguf, tmp_path):
    import gguf

    data = bytearray(float_gguf.read_bytes())
    header = gguf.GGUFReader(float_gguf).data_offset
    data[:header] = bytes(data[:header]).replace(b"llama", b"xyzzy")  # the same length: offsets hold
    odd = tmp_path / "odd.gguf"
    odd.write_bytes(bytes(data))
    for reader in gguf_in.READERS:
        with pytest.raises(ValueError, match="odd.gguf") as e:
            load_gguf(odd, reader=reader)
        assert "\n" not in str(e.value).strip()
    with pytest.raises(ValueError, match="unknown GGUF reader 'llama.cpp'"):
        load_gguf(float_gguf, reader="llama.cpp")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(float_gguf.read_bytes()[:-1000])  # every header byte, the last tensor short
    with pytest.raises(ValueError, match=r"cut.gguf is cut short: tensor output_norm.weight ends at byte"):
        load_gguf(cut)
