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
