"""Pruning: the masks against direct NumPy transcriptions of each method's published rule,
SparseGPT's blocked kernel against its scalar reference, less layer error than magnitude
pruning, and the model pipeline (patterns, joint quantization, errors)."""

import copy

import numpy as np
import pytest
import slmops
import torch
from conftest import CALIBRATION_TEXT
from slmops import _C
from slmops.nn import QuantLinear, SparseLinear
from slmops.prune.model import keep_mask
from slmops.quantize.gptq import damped


def _correlated(rng, n=64, k=128, samples=1024):
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = (rng.standard_normal((samples, k)) @ rng.standard_normal((k, k)) * 0.2).astype(np.float32)
    x *= rng.uniform(0.1, 3.0, k).astype(np.float32)  # channels of unequal size, as in LLMs
    return w, x


def test_keep_masks_follow_the_published_rules(rng):
    scores = torch.from_numpy(rng.standard_normal((6, 16)).astype(np.float32)).abs()
    keep = keep_mask(scores, 0, 0, 0.25).numpy()
    order = np.argsort(scores.numpy(), axis=1)  # Wanda: the lowest quarter of each row goes
    expect = np.ones_like(keep)
    np.put_along_axis(expect, order[:, :4], False, axis=1)
    assert (keep == expect).all()
    layer = keep_mask(scores, 0, 0, 0.25, per_row=False).numpy()  # magnitude: one threshold
    assert layer.sum() == 72 and scores.numpy()[~layer].max() <= scores.numpy()[layer].min()
    for n, m in ((2, 4), (4, 8)):
        keep = keep_mask(scores, n, m, 0.5).numpy().reshape(6, -1, m)
        s = scores.numpy().reshape(6, -1, m)
        assert (keep.sum(2) == n).all()
        assert (np.where(keep, s, np.inf).min(2) >= np.where(keep, -np.inf, s).max(2)).all()


@pytest.mark.parametrize("pattern", [(0.5, 0, 0), (0.0, 2, 4), (0.0, 4, 8)])
@pytest.mark.parametrize("bits", [0, 4])
def test_sparsegpt_beats_magnitude_and_wanda_on_layer_error(rng, pattern, bits):
    w, x = _correlated(rng)
    h = np.zeros((128, 128), np.float32)
    _C.hessian_accumulate(h, x)
    W, U = damped(w, h, 0.01)
    _C.cholesky_inverse_upper(U)
    mask = np.empty(w.shape, np.uint8)
    sparsity, n, m = pattern
    args = (None, None, None)
    if bits:
        args = (np.empty((64, 1), np.float32), np.empty((64, 1), np.uint8), np.empty(w.shape, np.uint8))
    Wr = W.copy()
    _C.sparsegpt_prune(W, U, sparsity, n, m, bits, True, 128, *args, mask)
    assert (W[mask == 0] == 0).all() and mask.mean() == 0.5
    ref_mask = np.empty_like(mask)
    ref_args = tuple(a.copy() for a in args) if bits else args
    _C.sparsegpt_prune(Wr, U, sparsity, n, m, bits, True, 128, *ref_args, ref_mask, reference=True)
    assert (mask == ref_mask).mean() > 0.99 and np.abs(W - Wr).max() < 0.05 * np.abs(w).max()

    def err(wp):
        return float(np.linalg.norm(x @ (w - wp).T))

    t = torch.from_numpy(w)
    magnitude = w * keep_mask(t.abs(), n, m, 0.5, per_row=False).numpy()
    norms = torch.from_numpy(np.sqrt((x.astype(np.float64) ** 2).sum(0))).float()
    wanda = w * keep_mask(t.abs() * norms, n, m, 0.5).numpy()
    assert err(wanda) < 0.9 * err(magnitude)
    # Pruned only, SparseGPT's update beats Wanda's mask; pruned and 4-bit quantized, it
    # still beats magnitude pruning in float.
    assert err(W) < (0.9 * err(wanda) if not bits else 0.9 * err(magnitude))


def test_prune_model_patterns_and_joint_quantization(tiny_llama):
    model, tok = tiny_llama
    calib = {"tokenizer": tok, "calibration": [CALIBRATION_TEXT * 30], "n_samples": 8, "seq_len": 32}
    for method in ("magnitude", "wanda", "sparsegpt"):
        for pattern in ("unstructured", "2:4"):
            m = copy.deepcopy(model)
            s = slmops.prune_model(m, method, pattern=pattern, progress=False, **calib)
            assert len(s.pruned) == 14 and "lm_head" in s.skipped and abs(s.achieved - 0.5) < 1e-9
            w = m.model.layers[0].mlp.up_proj.weight
            if pattern == "2:4":
                assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
            assert (m.lm_head.weight == model.lm_head.weight).all()
    m = copy.deepcopy(model)
    joint = {"bits": 4, "group_size": 32}
    s = slmops.prune_model(m, "sparsegpt", pattern="2:4", quantize=joint, progress=False, **calib)
    layer = m.model.layers[1].self_attn.o_proj
    assert isinstance(layer, QuantLinear) and s.quantized.startswith("int4")
    deq = layer.qweight.dequantize()
    assert ((deq.reshape(deq.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    ids = torch.tensor([tok(CALIBRATION_TEXT * 3)["input_ids"][:64]])
    with torch.no_grad():  # pruned and quantized, the model still runs and stays finite
        assert torch.isfinite(m(ids).logits).all()


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_wanda_pipeline_scores_each_weight_by_its_input_norm(tiny_llama, pattern):
    """The model pipeline's Wanda mask of the first layer's q_proj (whose inputs no earlier
    compression changes) equals the mask of |w| * ||x_j|| computed here from a hook."""
    model, tok = tiny_llama
    ids = torch.tensor(tok(CALIBRATION_TEXT * 30)["input_ids"][: 4 * 32]).reshape(4, 32)
    q_proj = model.model.layers[0].self_attn.q_proj
    seen = []
    hook = q_proj.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].reshape(-1, mod.in_features))
    )
    with torch.no_grad():
        model(ids)
    hook.remove()
    norms = torch.cat(seen).double().square().sum(0).sqrt().float()
    n, m = (0, 0) if pattern == "unstructured" else (2, 4)
    want = keep_mask(q_proj.weight.detach().abs() * norms, n, m, 0.5)
    assert (want != keep_mask(q_proj.weight.detach().abs(), n, m, 0.5)).float().mean() > 0.02  # not magnitude
    pruned = copy.deepcopy(model)
    slmops.prune_model(pruned, "wanda", pattern=pattern, calibration=ids, progress=False)
    got = pruned.model.layers[0].self_attn.q_proj.weight != 0
    assert (got == want).float().mean() > 0.999  # a tie broken the other way at most


def test_prune_errors_are_clear(tiny_llama):
    model, tok = tiny_llama
    run = lambda method="wanda", **kw: slmops.prune_model(copy.deepcopy(model), method, progress=False, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="method must be one of"):
        run("random")
    with pytest.raises(ValueError, match="pattern must be one of"):
        run(pattern="3:4")
    with pytest.raises(ValueError, match="sparsity must be in"):
        run("magnitude", sparsity=1.0)
    with pytest.raises(ValueError, match="SparseGPT's"):
        run("wanda", quantize={"bits": 4}, tokenizer=tok)
    with pytest.raises(ValueError, match="pass tokenizer="):
        run("wanda", calibration=[CALIBRATION_TEXT])
    with pytest.raises(ValueError, match="calibration text is empty"):
        run("sparsegpt", tokenizer=tok, calibration=[" "])
    with pytest.raises(ValueError, match="unknown quantize options"):
        run("sparsegpt", tokenizer=tok, quantize={"format": "int4"})


def test_prune_model_per_layer_sparsity_and_sparse_layers(tiny_llama):
    model, tok = tiny_llama
    ids = torch.tensor([tok(CALIBRATION_TEXT * 3)["input_ids"][:48]])
    shares = {"*mlp.down_proj": 0.9, "*self_attn.*": 0.25}
    dense = copy.deepcopy(model)
    s = slmops.prune_model(dense, "magnitude", sparsity=shares, progress=False)
    assert s.skipped["model.layers.0.mlp.up_proj"] == "no sparsity given for it"
    assert abs(s.pruned["model.layers.1.mlp.down_proj"] - 0.9) < 1e-3
    assert abs(s.pruned["model.layers.0.self_attn.q_proj"] - 0.25) < 1e-3
    # sparse=True: the same zeros, now in SparseLinear layers (CSR for unstructured), same logits
    sparse = copy.deepcopy(model)
    s = slmops.prune_model(sparse, "magnitude", sparsity=shares, sparse=True, progress=False)
    layer = sparse.model.layers[1].mlp.down_proj
    assert isinstance(layer, SparseLinear) and layer.sparse_weight.pattern == "csr"
    assert s.sparse_format == "csr" and s.bytes_sparse < s.bytes_dense
    with torch.no_grad():
        torch.testing.assert_close(sparse(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)
    for method in ("magnitude", "wanda"):
        nm = copy.deepcopy(model)
        s = slmops.prune_model(
            nm, method, pattern="2:4", sparse=True, sparse_values="int4", progress=False,
            tokenizer=tok, calibration=[CALIBRATION_TEXT * 30], n_samples=4, seq_len=32,
        )  # fmt: skip
        layer = nm.model.layers[0].self_attn.o_proj
        assert isinstance(layer, SparseLinear) and layer.sparse_weight.values == "int4"
        assert s.bytes_sparse / s.bytes_dense < 0.12  # int4 values, half of them, plus 2-bit indices
        with torch.no_grad():
            assert torch.isfinite(nm(ids).logits).all()
    with pytest.raises(ValueError, match="per-layer sparsity needs pattern='unstructured'"):
        slmops.prune_model(copy.deepcopy(model), "magnitude", sparsity={"*": 0.5}, pattern="2:4")
    with pytest.raises(ValueError, match="sparsity must be in"):
        slmops.prune_model(copy.deepcopy(model), "magnitude", sparsity={"*": 1.5})
    with pytest.raises(ValueError, match="CSR with float32"):
        slmops.prune_model(copy.deepcopy(model), "magnitude", sparse=True, sparse_values="int4")


def test_sparse_int4_layers_take_the_int8_activation_mode(tiny_llama):
    model = copy.deepcopy(tiny_llama[0])
    options = dict(pattern="2:4", sparse=True, sparse_values="int4", activation="int8", progress=False)
    slmops.prune_model(model, "magnitude", **options)
    assert {m.activation for m in model.modules() if isinstance(m, SparseLinear)} == {"int8"}
    with pytest.raises(ValueError, match="needs quantized layers"):
        slmops.prune_model(copy.deepcopy(tiny_llama[0]), "magnitude", pattern="2:4", activation="int8")
