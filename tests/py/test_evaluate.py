"""slmops.evaluate against direct torch computations on tiny random models."""

import json
import math

import pytest
import slmops
import torch

transformers = pytest.importorskip("transformers")


def tiny_model(ctx=128, vocab=97):
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=ctx,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def direct_nll(model, ids):
    """Sum of -log p(token | all previous tokens in ids) for ids[1:], in one forward pass."""
    with torch.no_grad():
        logits = model(ids.unsqueeze(0)).logits[0, :-1].double()
    return float(torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum"))


def test_single_window_perplexity_equals_direct_computation():
    model = tiny_model()
    ids = torch.randint(0, 97, (100,), generator=torch.Generator().manual_seed(1))
    r = slmops.evaluate_model(model, data=ids, seq_len=128)["perplexity"]
    assert r["tokens"] == 99
    assert r["perplexity"] == pytest.approx(math.exp(direct_nll(model, ids) / 99), rel=1e-5)


def test_non_overlapping_windows_equal_per_chunk_computation():
    model = tiny_model()
    ids = torch.randint(0, 97, (150,), generator=torch.Generator().manual_seed(2))
    r = slmops.evaluate_model(model, data=ids, seq_len=64, stride=64)["perplexity"]
    # Windows [0,64), [64,128), [128,150): each predicts its own tokens after its first, and
    # the first token of each later window is predicted from no context.
    nll = direct_nll(model, ids[0:64]) + direct_nll(model, ids[64:128]) + direct_nll(model, ids[128:150])
    assert r["tokens"] == 63 + 63 + 21
    # ... so with stride == seq_len the boundary tokens are not predicted at all; the count says so.
    assert r["perplexity"] == pytest.approx(math.exp(nll / r["tokens"]), rel=1e-5)


@pytest.mark.parametrize(("seq_len", "stride"), [(32, 16), (32, 1), (48, 47), (64, 32)])
def test_overlapping_windows_predict_every_token_once(seq_len, stride):
    model = tiny_model()
    ids = torch.randint(0, 97, (131,), generator=torch.Generator().manual_seed(3))
    r = slmops.evaluate_model(model, data=ids, seq_len=seq_len, stride=stride)["perplexity"]
    if stride < seq_len:
        assert r["tokens"] == 130
    # Longer context can only help a model on average; the figure stays finite and positive.
    assert 1 < r["perplexity"] < 1e4


def test_text_path_and_tokenizer(tmp_path):
    model = tiny_model()

    class Tok:  # any callable returning {"input_ids": [...]} works, as HF tokenizers do
        def __call__(self, text):
            return {"input_ids": [ord(c) % 97 for c in text]}

    text = "the quick brown fox jumps over the lazy dog " * 4
    from_text = slmops.evaluate_model(model, Tok(), data=text, seq_len=64)["perplexity"]
    f = tmp_path / "eval.txt"
    f.write_text(text, encoding="utf-8")
    from_file = slmops.evaluate_model(model, Tok(), data=f, seq_len=64)["perplexity"]
    assert from_text == from_file and from_text["tokens"] == len(text) - 1


def test_speed_and_memory_and_json(tmp_path):
    model = tiny_model()
    out = tmp_path / "eval" / "result.json"
    r = slmops.evaluate_model(
        model, metrics=["speed", "memory"], prompt_tokens=16, decode_tokens=4, repeats=3, output=out
    )
    s = r["speed"]
    assert s["prefill_tokens_per_s"] > 0 and s["decode_tokens_per_s"] > 0
    assert s["decode_tokens_per_s_p90"] <= s["decode_tokens_per_s"]  # p90 time is the slower tail
    assert s["threads"] == torch.get_num_threads()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert r["memory"]["model_bytes_in_memory"] >= param_bytes
    assert r["memory"]["peak_rss_bytes"] is None or r["memory"]["peak_rss_bytes"] > param_bytes
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    assert [p.name for p in out.parent.iterdir()] == ["result.json"]  # no temp file left


def test_quantized_model_and_files_on_disk(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 97, (90,), generator=torch.Generator().manual_seed(4))
    fp32 = slmops.evaluate_model(
        model, metrics=["perplexity", "memory"], data=ids, seq_len=64, model_dir=tmp_path
    )
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    assert fp32["memory"]["model_bytes_on_disk"] == on_disk
    slmops.quantize_model(model, format="int8")
    q = slmops.evaluate_model(model, metrics=["perplexity", "memory"], data=ids, seq_len=64)
    assert q["memory"]["model_bytes_in_memory"] < fp32["memory"]["model_bytes_in_memory"]
    # int8 RTN barely moves a model's perplexity: within 1% here.
    assert q["perplexity"]["perplexity"] == pytest.approx(fp32["perplexity"]["perplexity"], rel=1e-2)


def test_bad_input():
    model = tiny_model(ctx=64)
    ids = torch.randint(0, 97, (50,))
    with pytest.raises(ValueError, match="longer than the model's context of 64"):
        slmops.evaluate_model(model, data=ids, seq_len=128)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        slmops.evaluate_model(model, data=torch.tensor([1, 2, 500]), seq_len=32)
    with pytest.raises(ValueError, match="unknown metrics"):
        slmops.evaluate_model(model, metrics=["bleu"], data=ids)
    with pytest.raises(ValueError, match="needs data"):
        slmops.evaluate_model(model, seq_len=32)
    with pytest.raises(ValueError, match="tokenizer"):
        slmops.evaluate_model(model, data="some text", seq_len=32)
    from pathlib import Path

    with pytest.raises(FileNotFoundError):
        slmops.evaluate_model(model, data=Path("/nonexistent/eval.txt"), seq_len=32)
    with pytest.raises(ValueError, match="stride"):
        slmops.evaluate_model(model, data=ids, seq_len=32, stride=64)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        slmops.evaluate_model(model, metrics=["speed"], prompt_tokens=60, decode_tokens=10)


def test_peak_growth_sees_a_transient_allocation():
    """A 256 MiB tensor made and freed inside the block: the peak rose by it, though the
    resident set is back where it was."""
    from slmops.evaluate.metrics import PeakGrowth, rss_bytes

    with PeakGrowth() as idle:
        pass
    with PeakGrowth() as busy:
        t = torch.ones(64 * 2**20)  # 256 MiB, written so its pages are resident
        del t
    if busy.bytes is None:
        pytest.skip("the peak resident set is not readable here (not Linux)")
    assert busy.bytes >= 250 * 2**20 and idle.bytes < 32 * 2**20
    assert rss_bytes() is not None
