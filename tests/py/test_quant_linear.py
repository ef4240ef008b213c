"""QuantLinear and quantize_model against float torch modules with the same (dequantized)
weights."""

import copy

import pytest
import slmops
import torch
from slmops.nn import QuantLinear
from torch import nn

FORMATS = [
    ("int4", {"group_size": 32}),
    ("int4", {"group_size": 64, "symmetric": False}),
    ("int8", {}),
    ("nf4", {}),
    ("q4_0", {}),
    ("q8_0", {}),
    ("ternary", {}),
]


def dequantized_linear(q: QuantLinear) -> nn.Linear:
    lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
    with torch.no_grad():
        lin.weight.copy_(q.qweight.dequantize("float32"))
        if q.bias is not None:
            lin.bias.copy_(q.bias)
    return lin


@pytest.mark.parametrize(("fmt", "opts"), FORMATS, ids=[f"{f}{o}" for f, o in FORMATS])
def test_forward_and_input_gradient_match_float_linear(fmt, opts):
    torch.manual_seed(0)
    lin = nn.Linear(128, 48)
    q = QuantLinear.from_linear(lin, fmt, **opts)
    ref = dequantized_linear(q)
    x = torch.randn(2, 5, 128, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = q(x), ref(x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)
    assert not any(b.requires_grad for b in q.buffers())  # the quantized weight is frozen


def test_gradcheck_of_the_input_gradient():
    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(32, 8), "int8")
    # float64 inputs are not a kernel dtype; check the analytic gradient against the
    # dequantized weight directly instead.
    x = torch.randn(4, 32, requires_grad=True)
    q(x).sum().backward()
    torch.testing.assert_close(
        x.grad, q.qweight.dequantize("float32").sum(0).expand(4, 32), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_activations(dtype):
    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(64, 16), "int4")
    x = torch.randn(3, 64, dtype=dtype)
    y = q(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), dequantized_linear(q)(x.float()), rtol=2e-2, atol=2e-2)


def test_state_dict_round_trip_and_repr(tmp_path):
    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(96, 40), "int4", group_size=32, symmetric=False)
    torch.save(q.state_dict(), tmp_path / "q.pt")
    back = QuantLinear(96, 40, format="int4", group_size=32, symmetric=False)
    back.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    x = torch.randn(7, 96)
    torch.testing.assert_close(back(x), q(x), rtol=0, atol=0)
    assert "format=int4" in repr(q) and "bits_per_weight=5.167" in repr(
        q
    )  # 4 + 32/32 + 2 zero-point bytes per 96 and "weight_bytes=" in repr(q)
    wrong = QuantLinear(96, 40, format="int4", group_size=64)
    with pytest.raises((ValueError, RuntimeError)):
        wrong.load_state_dict(q.state_dict())


def test_loading_new_weights_repacks():
    torch.manual_seed(0)
    a = QuantLinear.from_linear(nn.Linear(64, 16), "q4_0")
    b = QuantLinear.from_linear(nn.Linear(64, 16), "q4_0")
    x = torch.randn(2, 64)
    a(x)  # packs a's weight
    a.load_state_dict(b.state_dict())
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("activation", ["float", "int8"])
def test_quantize_model_on_a_tiny_llama(activation):
    model = tiny_llama()
    summary = slmops.quantize_model(model, format="int4", group_size=32, activation=activation)
    linears = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear))]
    assert set(summary.replaced) == {n for n in linears if n != "lm_head"}
    assert summary.skipped == {"lm_head": "matches skip"}
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, QuantLinear)
    assert 6.0 < summary.ratio < 6.5  # fp32 -> 5 bits per weight
    assert "quantized 14 linear layers to int4" in str(summary)

    # The same model with every QuantLinear replaced by a float Linear holding its
    # dequantized weight: only the kernels' rounding (and for int8, the activations') differs.
    ref = copy.deepcopy(model)
    for name, m in list(ref.named_modules()):
        if isinstance(m, QuantLinear):
            parent_name, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent_name), child, dequantized_linear(m))
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        logits, logits_ref = model(ids).logits, ref(ids).logits
    err = (logits - logits_ref).abs().max().item() / logits_ref.abs().max().item()
    # float activations: fp32 summation order only (1e-4 relative to the largest logit);
    # int8 activations: per-32-block int8 rounding of every linear's input (2%).
    assert err < (1e-4 if activation == "float" else 2e-2), err


def test_quantize_model_reports_layers_the_format_cannot_take():
    model = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 8))
    summary = slmops.quantize_model(model, format="q4_k", skip=())
    assert summary.replaced == ["0"]
    assert "multiple of 256" in summary.skipped["2"]
    assert isinstance(model[2], nn.Linear)
    with pytest.raises(ValueError, match="method"):
        slmops.quantize_model(model, method="gptq-ish")
    only = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    s = slmops.quantize_model(only, include=["1"], skip=())
    assert s.replaced == ["1"] and s.skipped == {"0": "not in include"}


def test_loading_a_quantized_checkpoint_does_not_materialize_its_float_weights(tmp_path):
    """The model is built on the meta device and the stored codes assigned: the load's peak
    memory is about twice the codes' bytes (the file's tensors, and the empty modules they
    replace), under the float linears' (the float model built first, as before, is 1.0x alone);
    the loaded model gives the saved model's logits."""
    transformers = pytest.importorskip("transformers")
    import tokenizers
    from slmops.evaluate.metrics import peak_rss_bytes, reset_peak_rss
    from slmops.export import save_checkpoint
    from slmops.models import load_model

    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64, rope_theta=50000.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    float_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear))
    slmops.quantize_model(model, format="int4", group_size=32)
    word_level = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}, unk_token="a"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=word_level)
    save_checkpoint(model, tok, tmp_path / "q")
    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        expected = model(ids).logits
    del model
    if not reset_peak_rss():
        pytest.skip("peak memory cannot be reset here (not Linux)")
    before = peak_rss_bytes()
    loaded, _ = load_model(tmp_path / "q")
    grown = peak_rss_bytes() - before
    assert grown < 0.6 * float_bytes, (
        f"the load grew the process by {grown:,} bytes (float linears {float_bytes:,})"
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
    assert loaded.model.rotary_emb.inv_freq.equal(
        transformers.LlamaForCausalLM(cfg).model.rotary_emb.inv_freq
    )
