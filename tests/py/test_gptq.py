"""GPTQ: the C++ kernels against a NumPy float64 transcription of the published algorithm
(column by column, the inverse Hessian's Cholesky factor from numpy.linalg) and against
their own scalar references; RTN as the special case of an identity Hessian; less layer
error than RTN; the model pipeline and its errors on bad calibration input."""

import copy

import numpy as np
import pytest
import slmops
import torch
from conftest import CALIBRATION_TEXT
from slmops import _C
from slmops.nn import QuantLinear
from slmops.ops import quantize
from slmops.quantize.gptq import gptq_quantize_weight
from slmops.quantize.options import HessianOptions


def _layer(rng, n=48, k=128, samples=512):
    """A weight and the Hessian of correlated inputs (GPTQ gains only when inputs correlate)."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((samples, k)) @ rng.standard_normal((k, k)) * 0.2
    x[:, 5] = 0.0  # a dead input
    h = np.zeros((k, k), np.float32)
    _C.hessian_accumulate(h, x.astype(np.float32))
    return w, h


def _grid(g, bits, symmetric, p=1.0):
    """Scale, zero and 1/scale of each row of the group g (float32) with its range times p."""
    p = np.float32(p)
    maxq, mid = 2**bits - 1, 2 ** (bits - 1)
    if symmetric:
        signed = g[np.arange(len(g)), np.argmax(np.abs(g), axis=1)]
        scale = (p * signed / np.float32(-mid)).astype(np.float32)
        zero = np.full(len(g), mid)
    else:
        mn, mx = p * np.minimum(g.min(1), 0), p * np.maximum(g.max(1), 0)
        scale = ((mx - mn) / np.float32(maxq)).astype(np.float32)
        inv = np.where(scale != 0, np.float32(1) / np.where(scale != 0, scale, 1), 0).astype(np.float32)
        zero = np.where(scale != 0, np.clip(np.rint(-mn * inv), 0, maxq), mid)
    inv = np.where(scale != 0, np.float32(1) / np.where(scale != 0, scale, 1), 0).astype(np.float32)
    return scale, zero, inv


def _mse_grid(g, bits, symmetric):
    """GPTQ's Quantizer(mse=True) search (shrink 1.00, 0.99, ... 0.21), squared error."""
    best = np.full(len(g), np.inf)
    out = _grid(g, bits, symmetric)
    for i in range(80):
        scale, zero, inv = _grid(g, bits, symmetric, np.float32(1) - np.float32(i) * np.float32(0.01))
        q = np.clip(np.rint(g * inv[:, None]) + zero[:, None], 0, 2**bits - 1)
        err = (((q - zero[:, None]) * scale[:, None] - g) ** 2).sum(1)
        better = err < best
        best = np.where(better, err, best)
        out = tuple(np.where(better, new, old) for new, old in zip((scale, zero, inv), out, strict=True))
    return out


def _published_gptq(w, h, bits, group_size, symmetric, damp, mse=False):
    """Frantar et al., Algorithm 1 without lazy batches, float64: H^-1 = chol(inv(H))^T,
    column j quantized with the grid of its group (found on the error-updated weights when
    the group starts), its error spread over the later columns."""
    W, H = w.astype(np.float64).copy(), h.astype(np.float64).copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * np.mean(np.diag(H)) * np.eye(len(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    Q = np.zeros_like(W)
    for j in range(W.shape[1]):
        if j % group_size == 0:
            g = W[:, j : j + group_size].astype(np.float32)
            scale, zero, inv = (_mse_grid if mse else _grid)(g, bits, symmetric)
        q = np.clip(np.rint(W[:, j].astype(np.float32) * inv) + zero, 0, 2**bits - 1)
        Q[:, j] = (q - zero) * scale
        err = (W[:, j] - Q[:, j]) / U[j, j]
        W[:, j:] -= np.outer(err, U[j, j:])
    return Q


def _error(w, q, h):
    d = (w - q).astype(np.float64)
    return float(np.einsum("nk,kl,nl->", d, h.astype(np.float64), d))


@pytest.mark.parametrize(
    ("bits", "group_size", "symmetric", "mse"),
    [
        (4, 32, True, False),
        (4, 64, False, False),
        (3, 128, True, False),
        (3, 64, True, True),
        (4, 32, False, True),
    ],
)
def test_matches_the_published_algorithm(rng, bits, group_size, symmetric, mse):
    w, h = _layer(rng)
    ours = gptq_quantize_weight(
        w, h, bits=bits, group_size=group_size, symmetric=symmetric, damp=0.01, mse=mse
    )
    ref = _published_gptq(w, h, bits, group_size, symmetric, 0.01, mse)
    got = ours.dequantize()
    # float32 against float64: a value near a rounding boundary may round the other way.
    assert np.mean(np.isclose(got, ref, rtol=1e-4, atol=1e-6)) > 0.98
    assert _error(w, got, h) == pytest.approx(_error(w, ref, h), rel=0.02)


@pytest.mark.parametrize(
    "opts",
    [
        {"bits": 4, "group_size": 32, "symmetric": False},
        {"bits": 4, "group_size": 128, "act_order": True},
        {"bits": 8, "group_size": 0},
        {"bits": 2, "group_size": 16},
        {"bits": 3, "group_size": 64, "mse": True},
        {"bits": 4, "group_size": 32, "act_order": True, "symmetric": False, "mse": True},
    ],
)
def test_blocked_kernels_equal_their_scalar_reference(rng, opts):
    w, h = _layer(rng, k=320)  # K not a multiple of the block: a partial last block
    fast = gptq_quantize_weight(w, h, block=64, **opts).dequantize()
    slow = gptq_quantize_weight(w, h, reference=True, **opts).dequantize()
    np.testing.assert_allclose(fast, slow, rtol=1e-3, atol=1e-5)


def test_identity_hessian_is_round_to_nearest(rng):
    """No correlation, no damping: GPTQ has no error to spread and must equal RTN bit for bit."""
    w = rng.standard_normal((16, 256)).astype(np.float32)
    eye = np.eye(256, dtype=np.float32)
    for fmt, opts, rtn in [
        ("int4", {"bits": 4, "group_size": 32}, {"group_size": 32}),
        ("int4", {"bits": 4, "group_size": 128, "symmetric": False}, {"group_size": 128, "symmetric": False}),
        ("int8", {"bits": 8, "group_size": 0}, {}),
    ]:
        got = gptq_quantize_weight(w, eye, damp=0.0, **opts)
        want = quantize(w, fmt, **rtn)
        assert got.format == fmt
        for key, buf in want.tensors.items():
            np.testing.assert_array_equal(got.tensors[key], buf)


@pytest.mark.parametrize(("bits", "group_size"), [(3, 64), (4, 128), (8, 0)])
@pytest.mark.parametrize("mse", [False, True])
def test_less_layer_error_than_rtn(rng, bits, group_size, mse):
    """Against RTN on the same grid (min/max, or both searched)."""
    w, h = _layer(rng)
    gptq = gptq_quantize_weight(w, h, bits=bits, group_size=group_size, mse=mse).dequantize()
    rtn = gptq_quantize_weight(
        w, np.eye(len(h), dtype=np.float32), bits=bits, group_size=group_size, damp=0.0, mse=mse
    )
    assert _error(w, gptq, h) < 0.8 * _error(w, rtn.dequantize(), h)


@pytest.mark.parametrize(("bits", "symmetric"), [(3, True), (4, False), (8, True)])
def test_mse_grid_is_the_best_shrink_and_beats_min_max(rng, bits, symmetric):
    """The searched range of each group is the one of the 80 shrink factors with the least
    squared rounding error (NumPy transcription), so never worse than min/max; on
    heavy-tailed weights better, most at 3 bits."""
    w = (rng.standard_t(3, (64, 128)) * 0.05).astype(np.float32)
    gs = 32 if bits < 8 else 128
    groups = 128 // gs
    got = {}
    for mse in (False, True):
        scales, zeros = np.empty((64, groups), np.float32), np.empty((64, groups), np.uint8)
        _C.gptq_grid_params(w, bits, symmetric, gs if bits < 8 else 0, scales, zeros, mse=mse)
        got[mse] = scales, zeros
    lo = 1 if bits == 8 else 0

    def sq_error(scales, zeros):
        s, z = np.repeat(scales, gs, 1), np.repeat(zeros, gs, 1).astype(np.float32)
        inv = np.where(s != 0, np.float32(1) / np.where(s != 0, s, 1), 0).astype(np.float32)
        return (
            (((np.clip(np.rint(w * inv) + z, lo, 2**bits - 1) - z) * s - w) ** 2)
            .reshape(64, groups, gs)
            .sum(2)
        )

    if bits < 8:
        for g in range(groups):
            scale, zero, _ = _mse_grid(w[:, g * gs : (g + 1) * gs], bits, symmetric)
            np.testing.assert_allclose(got[True][0][:, g], scale, rtol=1e-6)
            np.testing.assert_array_equal(got[True][1][:, g], zero)
    plain, searched = sq_error(*got[False]), sq_error(*got[True])
    assert np.all(searched <= plain * (1 + 1e-6))
    assert (
        searched.sum() < {3: 0.9, 4: 0.99, 8: 1.0}[bits] * plain.sum()
    )  # the fewer levels, the more it gains


def test_act_order_keeps_static_groups(rng):
    """With act-order the groups' scales are those of the original weights (static groups),
    so the stored layout keeps contiguous groups."""
    w, h = _layer(rng)
    q = gptq_quantize_weight(w, h, bits=4, group_size=32, act_order=True)
    w0 = w.copy()
    w0[:, np.diag(h) == 0] = 0.0
    scales, zeros = np.empty((48, 4), np.float32), np.empty((48, 4), np.uint8)
    _C.gptq_grid_params(w0, 4, True, 32, scales, zeros)
    np.testing.assert_array_equal(q.tensors["scales"], scales)


def test_inverse_cholesky_factor_and_its_errors(rng):
    _, h = _layer(rng, k=200)
    h += np.eye(200, dtype=np.float32) * np.mean(np.diag(h)) * 0.01
    u = h.copy()
    _C.cholesky_inverse_upper(u)
    assert np.all(np.tril(u, -1) == 0) and np.all(np.diag(u) > 0)
    inv = np.linalg.inv(h.astype(np.float64))
    np.testing.assert_allclose(u.T.astype(np.float64) @ u, inv, atol=1e-4 * np.abs(inv).max())
    with pytest.raises(ValueError, match="not positive definite"):
        _C.cholesky_inverse_upper(-np.eye(8, dtype=np.float32))
    with pytest.raises(ValueError, match="bits must be one of"):
        gptq_quantize_weight(np.ones((2, 32), np.float32), np.eye(32, dtype=np.float32), bits=5)
    with pytest.raises(ValueError, match="power of two"):
        gptq_quantize_weight(np.ones((2, 48), np.float32), np.eye(48, dtype=np.float32), group_size=48)


# ---- the model pipeline ---------------------------------------------------------------------
TEXT = CALIBRATION_TEXT


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return tiny_llama


def test_model_pipeline_quantizes_every_layer_linear(tiny):
    model, tok = tiny
    m = copy.deepcopy(model)
    summary = slmops.quantize_model(m, "gptq", bits=4, group_size=32, tokenizer=tok, calibration=[TEXT * 30],
                                    n_samples=8, seq_len=32, progress=False)  # fmt: skip
    assert summary.method == "gptq" and len(summary.replaced) == 14
    assert isinstance(m.model.layers[1].mlp.down_proj, QuantLinear) and not isinstance(m.lm_head, QuantLinear)
    # Calibrated on this text, GPTQ's model is closer to the float one here than RTN's.
    rtn = copy.deepcopy(model)
    slmops.quantize_model(rtn, "rtn", format="int4", group_size=32)
    ids = torch.tensor([tok(TEXT * 3)["input_ids"][:64]])
    with torch.no_grad():
        ref = model(ids).logits
        assert (m(ids).logits - ref).pow(2).mean() < (rtn(ids).logits - ref).pow(2).mean()


def test_bad_calibration_input_is_a_clear_error(tiny, tmp_path):
    model, tok = tiny
    run = lambda **kw: slmops.quantize_model(copy.deepcopy(model), "gptq", progress=False, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="calibration text is empty"):
        run(tokenizer=tok, calibration=["  "])
    with pytest.raises(ValueError, match="fewer than one window"):
        run(tokenizer=tok, calibration=["a few words"], seq_len=32)
    big = slmops.zoo.train_tokenizer([TEXT + " ".join(f"w{i}" for i in range(2000))] * 3, vocab_size=1000)
    with pytest.raises(ValueError, match="does not belong to the model"):
        run(tokenizer=big, calibration=[" ".join(f"w{i}" for i in range(2000))], seq_len=32)
    with pytest.raises(ValueError, match="pass tokenizer="):
        run(calibration=[TEXT])
    with pytest.raises(ValueError, match="not a file"):
        run(tokenizer=tok, calibration=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="GPTQ writes int4"):
        run(tokenizer=tok, format="q4_k")
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320))
    with pytest.raises(ValueError, match="no decoder layer list"):
        slmops.quantize_model(gpt2, "gptq", tokenizer=tok, calibration=[TEXT * 30], progress=False)


# One pass a layer (greenlets: 3 chunks, 1 chunk); partial passes (a budget nothing fits in).
@pytest.mark.parametrize(("memory_budget", "batch_size"), [(None, 2), (None, 8), (1, 2)])
def test_linear_sequential_driver_feeds_each_linear_the_compressed_inputs(tiny, memory_budget, batch_size):
    """Each linear's Hessian is X^T X of its input with the linears the layer calls before
    it already compressed: checked against a fresh forward of the layer per linear."""
    from slmops.quantize.calibration import _first_layer_inputs, decoder_layers, run_linear_sequential

    model, _ = tiny
    m = copy.deepcopy(model)
    batches = torch.randint(0, 320, (6, 16), generator=torch.Generator().manual_seed(0))
    names = [[f"model.layers.{i}.{s}" for s in LLAMA_CALL_ORDER] for i in range(2)]
    seen: list[tuple[str, np.ndarray]] = []

    def compress(name, stats):
        seen.append((name, stats.hessian.copy()))
        linear = m.get_submodule(name)
        linear.weight.data = torch.round(linear.weight.data * 16) / 16  # a stand-in compression

    run_linear_sequential(
        m, batches, names, compress, hessian=True, progress=False, memory_budget=memory_budget
    )
    assert [n for n, _ in seen] == [n for layer in names for n in layer]  # the order the layers call them

    # Reference: the same rounding applied linear by linear on a fresh copy, each Hessian
    # taken from the whole layer's forward with the earlier linears rounded.
    ref = copy.deepcopy(model)
    with torch.no_grad():
        [(hidden, kwargs)] = _first_layer_inputs(ref, batches, batch_size=6)
        for i, layer in enumerate(decoder_layers(ref)):
            for name in names[i]:
                captured = []  # (a hook that returned a value would replace the output)
                handle = ref.get_submodule(name).register_forward_hook(
                    lambda mod, args, out, c=captured: (
                        c.append(args[0].reshape(-1, args[0].shape[-1])) and None
                    )
                )
                layer(hidden, **kwargs)
                handle.remove()
                x = captured[0].double()
                expected = (x.T @ x).numpy()
                got = dict(seen)[name]
                np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())
                lin = ref.get_submodule(name)
                lin.weight.data = torch.round(lin.weight.data * 16) / 16
            out = layer(hidden, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("method", ["gptq", "wanda", "sparsegpt"])
def test_memory_budget_option_picks_the_chunked_schedule_with_the_same_result(tiny, method, monkeypatch):
    """``memory_budget=0`` (nothing fits) runs the partial passes; the model they give
    equals the one-pass schedule's."""
    from slmops.quantize import calibration

    model, tok = tiny
    fits: list[bool] = []
    real_fit = calibration.layer_activations_fit
    monkeypatch.setattr(
        calibration, "layer_activations_fit", lambda *a, **kw: fits.append(real_fit(*a, **kw)) or fits[-1]
    )
    compress = slmops.quantize_model if method == "gptq" else slmops.prune_model
    models = []
    for budget in (None, 0):
        m = copy.deepcopy(model)
        compress(m, method, tokenizer=tok, calibration=[TEXT * 30], n_samples=8, seq_len=32,
                 memory_budget=budget, progress=False)  # fmt: skip
        models.append(m)
    assert fits == [True, False]
    options = slmops.quantize.options.GPTQOptions if method == "gptq" else slmops.prune.options.PruneOptions
    assert options(memory_budget=0).result_options() == options().result_options()  # one cache entry
    x = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = (m(x).logits for m in models)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# The order a Llama decoder layer calls its linears in.
LLAMA_CALL_ORDER = [
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
]  # fmt: skip


@pytest.mark.parametrize("sink_weight", [1.0, 64.0])
def test_hessian_counts_each_windows_first_token_sink_weight_times(rng, sink_weight):
    """H = sum over tokens of x x^T, the first token of each window (the attention sink)
    counted sink_weight times; 2-D rows (no windows) are counted once."""
    from slmops.quantize.calibration import InputStats

    x = rng.standard_normal((3, 7, 16)).astype(np.float32)
    stats = InputStats.empty(16, hessian=True, moments=False, sink_weight=sink_weight)
    stats.add(torch.from_numpy(x))
    flat = x.reshape(-1, 16).astype(np.float64)
    first = x[:, 0].astype(np.float64)
    expected = flat.T @ flat + (sink_weight - 1.0) * first.T @ first
    np.testing.assert_allclose(stats.hessian, expected, rtol=1e-5, atol=1e-4)
    rows = InputStats.empty(16, hessian=True, moments=False, sink_weight=sink_weight)
    rows.add(torch.from_numpy(x.reshape(-1, 16)))
    np.testing.assert_allclose(rows.hessian, flat.T @ flat, rtol=1e-5, atol=1e-4)


def test_sink_weight_reaches_the_hessian_of_the_model_pipeline(tiny, monkeypatch):
    """quantize_model's sink_weight is the one InputStats counts with (GPTQ and SparseGPT)."""
    from slmops.quantize import calibration

    seen = []
    original = calibration.InputStats.empty.__func__

    def spy(cls, k, *, hessian, moments, sink_weight=1.0):
        seen.append(sink_weight)
        return original(cls, k, hessian=hessian, moments=moments, sink_weight=sink_weight)

    monkeypatch.setattr(calibration.InputStats, "empty", classmethod(spy))
    model, tok = tiny
    slmops.quantize_model(copy.deepcopy(model), "gptq", tokenizer=tok, calibration=[TEXT * 30],
                          n_samples=4, seq_len=32, sink_weight=5.0, progress=False)  # fmt: skip
    assert seen and set(seen) == {5.0}
    seen.clear()
    slmops.prune_model(copy.deepcopy(model), "sparsegpt", tokenizer=tok, calibration=[TEXT * 30],
                       n_samples=4, seq_len=32, progress=False)  # fmt: skip
    assert seen and set(seen) == {HessianOptions.model_fields["sink_weight"].default}
