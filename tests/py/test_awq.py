"""AWQ: folding the scales leaves the float model's outputs unchanged; on inputs with
outlier channels the searched scales and clipping give less layer error than RTN; the model
pipeline quantizes every layer linear and its errors are clear."""

import copy

import numpy as np
import pytest
import slmops
import torch
from conftest import CALIBRATION_TEXT
from slmops.nn import QuantLinear
from slmops.quantize.awq import _clip, _search_scale
from slmops.quantize.calibration import InputStats
from slmops.quantize.scaling import fold_scales as _fold
from slmops.quantize.scaling import scale_groups as _scale_groups


def test_folding_keeps_the_float_model(tiny_llama):
    model, tok = tiny_llama
    m = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    for layer in m.model.layers:
        for prev, linears in _scale_groups(layer):
            _fold(prev, linears, torch.rand(linears[0].in_features, generator=gen) * 3 + 0.2)
    ids = torch.tensor([tok(CALIBRATION_TEXT * 3)["input_ids"][:64]])
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
        assert not torch.equal(m.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)


@torch.no_grad()
@pytest.mark.parametrize("duo_scaling", [False, True])
def test_scales_and_clipping_beat_rtn_with_outlier_channels(duo_scaling):
    gen = torch.Generator().manual_seed(1)
    k = 256
    x = torch.randn(1024, k, generator=gen)
    x[:, :4] *= 40.0  # a few channels carry large activations, as in LLMs
    linear = torch.nn.Linear(k, 128, bias=False)
    torch.nn.init.normal_(linear.weight, std=0.02, generator=gen)
    ref = x @ linear.weight.t()
    options = {"group_size": 128, "symmetric": False}

    def error(layer):
        q = slmops.ops.quantize(layer.weight.detach(), "int4", **options).dequantize()
        return float((x @ q.t() - ref).square().mean())

    rtn = error(linear)
    a = InputStats(abs_sum=x.abs().sum(0).double().numpy(), rows=len(x), sample=[x])
    s = _search_scale([linear], a, "int4", options, duo_scaling)
    # The search's pick is the candidate of least output error, each candidate written out
    # here from its definition (AutoAWQ's duo scaling: activations over weights).
    w = linear.weight.detach()
    groups = w.abs().reshape(128, 2, 128)
    w_mean = (groups / (groups.amax(-1, keepdim=True) + 1e-6)).reshape(128, k).mean(0)
    candidates = []
    for i in range(20):
        c = (x.abs().mean(0).pow(i / 20) / ((w_mean.pow(1 - i / 20) + 1e-4) if duo_scaling else 1)).clamp(
            min=1e-4
        )
        c = c / (c.max() * c.min()).sqrt()
        q = slmops.ops.quantize(w * c, "int4", **options).dequantize() / c
        candidates.append((float((x @ q.t() - ref).square().mean()), c))
    torch.testing.assert_close(s, min(candidates, key=lambda e: e[0])[1], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        linear.weight.mul_(s)
    xs = x / s
    scaled = slmops.ops.quantize(linear.weight.detach(), "int4", **options).dequantize()
    awq = float((xs @ scaled.t() - ref).square().mean())
    assert s[:4].min() > s[4:].max() and awq < 0.7 * rtn
    _clip(linear, xs, 128, "int4", options)
    clipped = slmops.ops.quantize(linear.weight.detach(), "int4", **options).dequantize()
    assert float((xs @ clipped.t() - ref).square().mean()) <= awq * 1.0001


def test_awq_model_pipeline_and_errors(tiny_llama):
    model, tok = tiny_llama
    m = copy.deepcopy(model)
    calib = {"tokenizer": tok, "calibration": [CALIBRATION_TEXT * 30], "n_samples": 8, "seq_len": 32}
    summary = slmops.quantize_model(m, "awq", group_size=32, progress=False, **calib)
    assert summary.method == "awq" and len(summary.replaced) == 14
    assert isinstance(m.model.layers[1].self_attn.v_proj, QuantLinear)
    assert not isinstance(m.lm_head, QuantLinear)
    assert "zero_points" in m.model.layers[0].mlp.down_proj.qweight.tensors  # asymmetric by default
    ids = torch.tensor([tok(CALIBRATION_TEXT * 3)["input_ids"][:64]])
    with torch.no_grad():  # (the quality claim is the layer test above and the benchmark's table)
        assert torch.isfinite(m(ids).logits).all()
    with pytest.raises(ValueError, match="AWQ writes int4 or int8"):
        slmops.quantize_model(copy.deepcopy(model), "awq", format="nf4", progress=False, **calib)
    with pytest.raises(ValueError, match="pass tokenizer="):
        slmops.quantize_model(copy.deepcopy(model), "awq", calibration=[CALIBRATION_TEXT], progress=False)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320))
    with pytest.raises(ValueError, match="no decoder layer list"):
        slmops.quantize_model(gpt2, "awq", progress=False, **calib)
    assert np.isfinite(summary.seconds)


@pytest.mark.parametrize("scale_qkv", [True, False])
def test_scale_qkv_off_leaves_the_input_norm_alone(tiny_llama, scale_qkv):
    """The q/k/v scales are folded into input_layernorm: off, it keeps the float model's
    weights while the MLP's scales still fold into post_attention_layernorm."""
    model, tok = tiny_llama
    m = copy.deepcopy(model)
    slmops.quantize_model(m, "awq", group_size=32, tokenizer=tok, calibration=[CALIBRATION_TEXT * 30],
                          n_samples=8, seq_len=32, scale_qkv=scale_qkv, progress=False)  # fmt: skip
    for layer, ref in zip(m.model.layers, model.model.layers, strict=True):
        assert torch.equal(layer.input_layernorm.weight, ref.input_layernorm.weight) == (not scale_qkv)
        assert not torch.equal(layer.post_attention_layernorm.weight, ref.post_attention_layernorm.weight)


@torch.no_grad()
def test_block_loss_is_the_attention_output_of_the_first_windows(tiny_llama):
    """With the block loss, the q/k/v scales are the candidate whose fake-quantized weights
    change the self-attention output least on the kept windows: checked against each
    candidate run through a copy of the attention on the first window alone (so the
    slicing of the layer's call arguments to that window is checked too)."""
    from slmops.quantize.awq import _block, _first_windows
    from slmops.quantize.calibration import _output

    model, tok = tiny_llama
    m = copy.deepcopy(model)
    attn = m.model.layers[0].self_attn
    ids = torch.tensor([tok(CALIBRATION_TEXT * 10)["input_ids"][i : i + 32] for i in (0, 40, 80)])
    calls = []
    handle = attn.register_forward_pre_hook(lambda mod, a, kw: calls.append((a, kw)), with_kwargs=True)
    m(ids, use_cache=False)  # the batch of three windows: the search keeps the first
    m(ids[:1], use_cache=False)  # the first window alone: the brute force below runs on it
    handle.remove()
    kept = _first_windows(*calls[0], 1)
    alone_args, alone_kwargs = calls[1]
    x = alone_kwargs["hidden_states"][0]
    stats = InputStats(abs_sum=x.abs().sum(0).double().numpy(), rows=len(x), sample=[x])
    linears = [attn.q_proj, attn.k_proj, attn.v_proj]
    options = {"group_size": 32, "symmetric": False}
    block = _block(attn, linears, lambda a: _output(a(*kept[0], **kept[1])))
    before = [lin.weight.clone() for lin in linears]
    s = _search_scale(linears, stats, "int4", options, True, block=block)
    assert all(torch.equal(b, lin.weight) for b, lin in zip(before, linears, strict=True))  # restored

    reference = _output(attn(*alone_args, **alone_kwargs))
    w = torch.cat(before).abs().reshape(-1, 2, 32)
    w_mean = (w / (w.amax(-1, keepdim=True) + 1e-6)).reshape(-1, 64).mean(0)
    candidates = []
    for i in range(20):
        c = (x.abs().mean(0).pow(i / 20) / (w_mean.pow(1 - i / 20) + 1e-4)).clamp(min=1e-4)
        c = c / (c.max() * c.min()).sqrt()
        trial = copy.deepcopy(attn)
        for lin, wt in zip([trial.q_proj, trial.k_proj, trial.v_proj], before, strict=True):
            lin.weight.copy_(slmops.ops.quantize(wt * c, "int4", **options).dequantize() / c)
        out = _output(trial(*alone_args, **alone_kwargs))
        if i == 7:  # the block computes the same output for the same candidate
            q = [slmops.ops.quantize(wt * c, "int4", **options).dequantize() / c for wt in before]
            torch.testing.assert_close(block(q), out, rtol=1e-5, atol=1e-6)
        candidates.append((float((out - reference).square().mean()), c))
    torch.testing.assert_close(s, min(candidates, key=lambda e: e[0])[1], rtol=1e-4, atol=1e-6)


@torch.no_grad()
def test_first_tokens_count_sink_weight_times():
    """The windows' first tokens are kept apart: their share of the loss is what counting
    each sink_weight times among all rows gives, and the search minimizes that mix."""
    from slmops.quantize.awq import _sink_share

    gen = torch.Generator().manual_seed(2)
    k = 256
    x = torch.randn(512, k, generator=gen)
    first = torch.randn(8, k, generator=gen) * 0.1
    first[:, 4:8] = 200.0  # the sink's own huge channels
    linear = torch.nn.Linear(k, 64, bias=False)
    torch.nn.init.normal_(linear.weight, std=0.02, generator=gen)
    rows = 8 * 512  # 8 windows of 512 tokens were seen
    stats = InputStats(abs_sum=x.abs().mean(0).double().numpy() * rows, rows=rows, sample=[x], first=[first])
    assert _sink_share(stats, 1.0) == pytest.approx(8 / rows)
    assert _sink_share(stats, 64.0) == pytest.approx(64 * 8 / (rows - 8 + 64 * 8))
    assert _sink_share(InputStats(rows=rows, sample=[x]), 64.0) == 0.0
    options = {"group_size": 128, "symmetric": True}
    w = linear.weight.detach()
    picks = []
    for weight in (0.0, 4096.0):
        share = _sink_share(stats, weight)
        s = _search_scale([linear], stats, "int4", options, False, sink_weight=weight)
        candidates = []
        for i in range(20):
            c = x.abs().mean(0).pow(i / 20).clamp(min=1e-4)
            c = c / (c.max() * c.min()).sqrt()
            d = (slmops.ops.quantize(w * c, "int4", **options).dequantize() / c - w).t()
            loss = (1 - share) * float((x @ d).square().mean()) + share * float((first @ d).square().mean())
            candidates.append((loss, c))
        torch.testing.assert_close(s, min(candidates, key=lambda e: e[0])[1], rtol=1e-4, atol=1e-6)
        picks.append(s)
    assert not torch.equal(picks[0], picks[1])  # the sink's weight changes the pick
