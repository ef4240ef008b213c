"""SmoothQuant: the smoothing factors as the paper defines them, less W8A8 error than plain
W8A8 on inputs with outlier channels, and the model pipeline (int8 weights, int8 per-token
activations) with its errors."""

import copy

import pytest
import slmops
import torch
from conftest import CALIBRATION_TEXT
from slmops.nn import QuantLinear
from slmops.quantize.smoothquant import smooth_scales


@torch.no_grad()
def test_smoothing_cuts_w8a8_error_with_outlier_channels():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(256, 128, generator=gen)
    x[:, :3] *= 60.0
    w = torch.randn(64, 128, generator=gen) * 0.05
    s = smooth_scales(x.abs().amax(0), [w], 0.5)
    torch.testing.assert_close(s, (x.abs().amax(0).sqrt() / w.abs().amax(0).sqrt()))
    ref = x @ w.t()

    def w8a8(xx, ww):
        return QuantLinear.from_linear(_linear(ww), "int8", activation="int8_row")(xx)

    plain = (w8a8(x, w) - ref).square().mean()
    smooth = (w8a8(x / s, w * s) - ref).square().mean()
    assert smooth < 0.5 * plain


def _linear(w):
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    linear.weight.data = w.clone()
    return linear


def test_smoothquant_model_pipeline_and_errors(tiny_llama):
    model, tok = tiny_llama
    calib = {"tokenizer": tok, "calibration": [CALIBRATION_TEXT * 30], "n_samples": 8, "seq_len": 32}
    m = copy.deepcopy(model)
    summary = slmops.quantize_model(m, "smoothquant", format="int8", progress=False, **calib)
    assert summary.method == "smoothquant" and len(summary.replaced) == 14
    q = m.model.layers[0].self_attn.q_proj
    assert isinstance(q, QuantLinear) and q.activation == "int8_row" and q.qweight.format == "int8"
    # The norm before q/k/v now holds 1/s: it changed, and the model still tracks the float one.
    norm, before = m.model.layers[0].input_layernorm.weight, model.model.layers[0].input_layernorm.weight
    assert not torch.equal(norm, before)
    ids = torch.tensor([tok(CALIBRATION_TEXT * 3)["input_ids"][:64]])
    with torch.no_grad():
        ref = model(ids).logits
        assert (m(ids).logits - ref).abs().max() < 0.1 * ref.abs().max()

    def run(**kw):
        return slmops.quantize_model(copy.deepcopy(model), "smoothquant", progress=False, **calib, **kw)

    with pytest.raises(ValueError, match="format must be 'int8'"):
        run(format="int4")
    with pytest.raises(ValueError, match="alpha must be in"):
        run(format="int8", alpha=2)


@pytest.mark.parametrize("through_linears", [True, False])
def test_down_proj_input_is_smoothed_through_up_proj(tiny_llama, through_linears):
    """down_proj's int8 weights are W * s (s from its float inputs' abs max, computed here with
    hooks on the float model) when smoothing goes through linears, W itself when it does not."""
    from slmops.quantize.calibration import calibration_batches

    model, tok = tiny_llama
    batches = calibration_batches(tok, [CALIBRATION_TEXT * 30], n_samples=8, seq_len=32)
    down = model.model.layers[1].mlp.down_proj
    seen = []
    hook = down.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().abs().amax((0, 1))))
    with torch.no_grad():
        model(batches)
    hook.remove()
    s = smooth_scales(torch.stack(seen).amax(0), [down.weight], 0.5) if through_linears else torch.ones(128)
    m = copy.deepcopy(model)
    options = {"format": "int8", "calibration": batches, "through_linears": through_linears}
    slmops.quantize_model(m, "smoothquant", progress=False, **options)
    got = m.model.layers[1].mlp.down_proj.qweight.dequantize()
    want = down.weight.detach() * s
    step = want.abs().amax(1, keepdim=True) / 127  # int8 per row: at most half a step off
    assert ((got - want).abs() <= 0.51 * step + 1e-6).all()
