"""GGUF export: read back with the gguf package (llama.cpp's own reader and numpy
dequantizers), every tensor compared with our dequantized weights, the metadata llama.cpp's
loader needs, the Q/K rotary permutation against a direct RoPE computation, and errors."""

import copy
import hashlib
import json

import gguf
import numpy as np
import pytest
import slmops
import torch
from slmops.export import export
from slmops.export.gguf import _permute_rows
from slmops.zoo import train_tokenizer

TEXT = "In the beginning God created the heaven and the earth. And the earth was without form, and void.\n"


@pytest.fixture(scope="module")
def tiny():
    """A random Llama with hidden 256 (so k-quants apply), GQA, and a byte-level BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer([TEXT] * 20, vocab_size=300)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval(), tok


def _read(path):
    r = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in r.tensors}
    fields = {}
    for name, f in r.fields.items():
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            fields[name] = [f.contents(i) for i in range(len(f.data))]
        else:
            fields[name] = f.contents()
    return tensors, fields


def _dequant(t) -> np.ndarray:
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(
        tuple(reversed(t.shape.tolist()))
    )


def test_mixed_types_read_back_exactly(tmp_path, tiny):
    model, tok = tiny
    q = copy.deepcopy(model)
    slmops.quantize_model(q, format="q4_k", include=["*self_attn*"])
    slmops.quantize_model(q, format="q8_0", include=["*mlp.gate_proj", "*mlp.up_proj"])
    slmops.quantize_model(q, format="q6_k", include=["*mlp.down_proj"])
    man = export(q, "gguf", tmp_path / "out", tokenizer=tok, tensor_types={"token_embd.weight": "q4_0"})
    tensors, fields = _read(tmp_path / "out" / "model.gguf")
    cfg = q.config
    assert "output.weight" not in tensors  # tied: llama.cpp falls back to token_embd
    expected_types = {"attn_q": "Q4_K", "attn_k": "Q4_K", "attn_v": "Q4_K", "attn_output": "Q4_K",
                      "ffn_gate": "Q8_0", "ffn_up": "Q8_0", "ffn_down": "Q6_K",
                      "attn_norm": "F32", "ffn_norm": "F32"}  # fmt: skip
    for i, layer in enumerate(q.model.layers):
        for short, t in expected_types.items():
            assert tensors[f"blk.{i}.{short}.weight"].tensor_type.name == t
        for short, mod, heads in (
            ("attn_q", layer.self_attn.q_proj, cfg.num_attention_heads),
            ("attn_k", layer.self_attn.k_proj, cfg.num_key_value_heads),
            ("attn_v", layer.self_attn.v_proj, None),
            ("attn_output", layer.self_attn.o_proj, None),
            ("ffn_gate", layer.mlp.gate_proj, None),
            ("ffn_down", layer.mlp.down_proj, None),
        ):
            ours = mod.qweight.dequantize("float32").numpy()
            if heads is not None:
                ours = _permute_rows(ours, heads)
            np.testing.assert_array_equal(_dequant(tensors[f"blk.{i}.{short}.weight"]), ours)
        np.testing.assert_array_equal(
            _dequant(tensors[f"blk.{i}.attn_norm.weight"]), layer.input_layernorm.weight.detach().numpy()
        )
    emb = q.model.embed_tokens.weight.detach().numpy()
    assert tensors["token_embd.weight"].tensor_type.name == "Q4_0"
    np.testing.assert_array_equal(
        _dequant(tensors["token_embd.weight"]), slmops.ops.quantize(emb, "q4_0").dequantize()
    )
    # The metadata llama.cpp's llama loader reads (quant-sparse-anchors.md, section 2.2).
    want = {
        "general.architecture": "llama", "llama.context_length": 128, "llama.embedding_length": 256,
        "llama.block_count": 2, "llama.feed_forward_length": 512, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 64,
        "general.quantization_version": 2, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 3, "llama.vocab_size": 320,
    }  # fmt: skip
    for key, value in want.items():
        assert fields[key] == value, key
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    assert fields["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert fields["tokenizer.chat_template"] == tok.chat_template
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == 320  # one per embedding row; rows past the tokenizer are unused
    assert all(tokens[i] == t for t, i in tok.get_vocab().items())
    types = fields["tokenizer.ggml.token_type"]
    assert types[0] == gguf.TokenType.CONTROL and types[10] == gguf.TokenType.NORMAL
    assert types[-1] == gguf.TokenType.UNUSED
    spec = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in spec]
    # The manifest names every file with its size and checksum.
    for f in man["files"]:
        data = (tmp_path / "out" / f["path"]).read_bytes()
        assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"]
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER num_ctx 128" in modelfile


def test_float_model_with_default_and_fallback_types(tmp_path, tiny):
    model, tok = tiny
    man = export(model, "gguf", tmp_path / "f", tokenizer=tok, default_type="q4_k")
    tensors, _ = _read(tmp_path / "f" / "model.gguf")
    # K = 256 and 512 take q4_k; the 320 x 256 embedding does too (its rows are 256 long).
    assert {r["type"] for r in man["tensors"] if r["name"].startswith("blk.0.attn_q")} == {"q4_k"}
    w = model.model.layers[1].mlp.down_proj.weight.detach().numpy()
    np.testing.assert_array_equal(
        _dequant(tensors["blk.1.ffn_down.weight"]), slmops.ops.quantize(w, "q4_k").dequantize()
    )
    export(model, "gguf", tmp_path / "h", tokenizer=tok)  # default f16
    tensors, _ = _read(tmp_path / "h" / "model.gguf")
    np.testing.assert_array_equal(
        _dequant(tensors["blk.1.ffn_down.weight"]), w.astype(np.float16).astype(np.float32)
    )


def _rope(x: torch.Tensor, pos: torch.Tensor, pairs: str, theta: float = 10000.0) -> torch.Tensor:
    """RoPE on [..., T, d]: 'halves' rotates (i, i + d/2) as Hugging Face does, 'adjacent'
    rotates (2i, 2i + 1) as llama.cpp's NORM mode does; both with frequency theta^(-2i/d)."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None].double() * inv[None, :]
    cos, sin = torch.cos(ang), torch.sin(ang)
    if pairs == "halves":
        a, b = x[..., : d // 2], x[..., d // 2 :]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)


def test_qk_permutation_gives_llama_cpp_the_same_attention_scores(tiny):
    model, _ = tiny
    cfg = model.config
    attn = model.model.layers[0].self_attn
    d, hq, hk = 64, cfg.num_attention_heads, cfg.num_key_value_heads
    x = torch.randn(5, 256, dtype=torch.float64)
    pos = torch.arange(5)
    wq, wk = attn.q_proj.weight.detach().double(), attn.k_proj.weight.detach().double()
    wq_g = torch.from_numpy(_permute_rows(wq.numpy(), hq))
    wk_g = torch.from_numpy(_permute_rows(wk.numpy(), hk))

    def scores(wq_, wk_, pairs):
        q = _rope((x @ wq_.T).view(5, hq, d).transpose(0, 1), pos, pairs)
        k = _rope((x @ wk_.T).view(5, hk, d).transpose(0, 1), pos, pairs)
        k = k.repeat_interleave(hq // hk, 0)
        return q @ k.transpose(1, 2)

    torch.testing.assert_close(scores(wq_g, wk_g, "adjacent"), scores(wq, wk, "halves"))
    # Without the permutation llama.cpp would compute something else.
    assert not torch.allclose(scores(wq, wk, "adjacent"), scores(wq, wk, "halves"))


def test_rope_base_frequency_is_the_models(tmp_path, tiny):
    """A RoPE base other than llama.cpp's default 10000 (SmolLM2's is 100000) is written:
    the model read back gives the same logits after the first position, where RoPE acts."""
    model, tok = tiny
    m = copy.deepcopy(model)
    m.config.rope_parameters = {"rope_type": "default", "rope_theta": 100000.0}
    m.model.rotary_emb = type(m.model.rotary_emb)(m.config)
    export(m, "gguf", tmp_path / "g", tokenizer=tok, default_type="f32")
    assert _read(tmp_path / "g" / "model.gguf")[1]["llama.rope.freq_base"] == 100000.0
    back, _ = slmops.zoo.load(tmp_path / "g" / "model.gguf")
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        np.testing.assert_allclose(back(ids).logits.numpy(), m(ids).logits.numpy(), rtol=0, atol=1e-4)
    linear = copy.deepcopy(model)
    linear.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="GGUF export writes plain RoPE"):
        export(linear, "gguf", tmp_path / "h", tokenizer=tok)


def test_bad_exports_fail_before_writing(tmp_path, tiny):
    from transformers import GPT2Config, GPT2LMHeadModel

    model, tok = tiny
    q = copy.deepcopy(model)
    slmops.quantize_model(q, format="int4")
    with pytest.raises(ValueError, match="'int4', which GGUF cannot hold exactly.*q4_k"):
        export(q, "gguf", tmp_path / "a", tokenizer=tok)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_embd=64, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="this model is 'gpt2'"):
        export(gpt2, "gguf", tmp_path / "b", tokenizer=tok)
    with pytest.raises(ValueError, match="GGUF types are"):
        export(model, "gguf", tmp_path / "c", tokenizer=tok, tensor_types={"blk.*": "q3_k"})
    with pytest.raises(ValueError, match="unknown export target 'onnx'"):
        export(model, "onnx", tmp_path / "d", tokenizer=tok)
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        export(model, "gguf", tmp_path / "e")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_writing_leaves_nothing(tmp_path, tiny, monkeypatch):
    model, tok = tiny
    from slmops.export import gguf as g

    def broken(model, tokenizer, path, **kw):
        path.write_bytes(b"GGUF partial")
        raise OSError("disk full")

    monkeypatch.setattr(g, "write_gguf", broken)
    with pytest.raises(OSError, match="disk full"):
        export(model, "gguf", tmp_path / "out", tokenizer=tok)
    assert list(tmp_path.iterdir()) == []
