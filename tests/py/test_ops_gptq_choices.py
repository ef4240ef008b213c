"""The lists of choices slmops.ops reads from C++ (_C.kd_divergences(), ...): each name in a
list is one the kernels accept, and a name not in it is refused with a ValueError that lists
exactly the exported names, so the Python tuples cannot drift from what C++ parses."""

import importlib

import numpy as np
import pytest
import slmops
import torch
from conftest import gaussian
from slmops import _C
from slmops.ops import SparseTensor, kd_loss, qmatmul, quantize, sparsify, spmm

kd_ops = importlib.import_module("slmops.ops.kd")
qmatmul_ops = importlib.import_module("slmops.ops.qmatmul")
sparse_ops = importlib.import_module("slmops.ops.sparse")


def alternatives(names) -> str:
    quoted = [f"'{n}'" for n in names]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def test_the_ops_tuples_are_the_exported_lists():
    assert kd_ops.DIVERGENCES == tuple(_C.kd_divergences()) == ("forward_kl", "reverse_kl", "jsd")
    assert qmatmul_ops.ACTIVATIONS == tuple(_C.qmatmul_activations()) == ("float", "int8", "int8_row")
    assert qmatmul_ops.BACKENDS == tuple(_C.qmatmul_backends()) == ("auto", "kernels", "onednn")
    assert qmatmul_ops.CUDA_BACKENDS == tuple(_C.cuda_qmatmul_backends())
    assert qmatmul_ops.CUDA_BACKENDS == ("auto", "gemv", "tensor_core", "dequantize_gemm")
    assert sparse_ops.PATTERNS == tuple(p["name"] for p in _C.sparse_patterns()) == ("2:4", "4:8", "csr")
    assert sparse_ops.VALUE_TYPES == tuple(_C.sparse_value_types()) == ("float32", "bfloat16", "int8", "int4")
    assert sparse_ops.SPMM_ACTIVATIONS == tuple(_C.spmm_activations()) == ("float", "int8")


def test_every_divergence_is_accepted_and_an_unknown_one_refused(rng):
    z, t = gaussian(rng, (6, 40)), gaussian(rng, (6, 40))
    losses = {}
    for d in _C.kd_divergences():
        loss_rows = np.empty(6, np.float32)
        _C.kd_loss(z, loss_rows, teacher_logits=t, divergence=d, temperature=1.0, beta=0.5, scale_t2=True,
                   hard_weight=0.0, ignore_index=-100, grad_scale=1.0)  # fmt: skip
        losses[d] = float(loss_rows.sum())
        assert float(kd_loss(z, t, divergence=d, reduction="sum")) == pytest.approx(losses[d], rel=1e-6)
    assert len(set(losses.values())) == len(losses)  # each name selects a different divergence
    with pytest.raises(ValueError, match=f"divergence must be {alternatives(_C.kd_divergences())}, got 'kl'"):
        _C.kd_loss(z, np.empty(6, np.float32), teacher_logits=t, divergence="kl", temperature=1.0, beta=0.5,
                   scale_t2=True, hard_weight=0.0, ignore_index=-100, grad_scale=1.0)  # fmt: skip
    with pytest.raises(ValueError, match="divergence must be one of"):
        kd_loss(z, t, divergence="kl")


def test_every_qmatmul_activation_and_backend_is_accepted_and_unknown_ones_refused(rng):
    w, x = gaussian(rng, (32, 64)), gaussian(rng, (3, 64))
    q = quantize(w, "int8")  # per-channel int8: the one weight every activation and backend takes
    y = np.empty((3, 32), np.float32)
    for act in _C.qmatmul_activations():
        _C.qmatmul(q.packed(), x, None, y, activation=act)
        np.testing.assert_allclose(y, qmatmul(x, q, activation=act), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(y, x @ q.dequantize().T, rtol=0.05, atol=0.05 * np.abs(y).max())
    for backend in _C.qmatmul_backends():
        if backend == "onednn" and not slmops.build_info()["onednn"]:
            with pytest.raises(ValueError, match="backend 'onednn' needs"):  # parsed, then found missing
                _C.qmatmul(q.packed(), x, None, y, activation="int8_row", backend=backend)
            continue
        _C.qmatmul(q.packed(), x, None, y, activation="int8_row", backend=backend)
        kernels = qmatmul(x, q, activation="int8_row", backend="kernels")
        np.testing.assert_allclose(y, kernels, rtol=1e-4, atol=1e-4)
    names = alternatives(_C.qmatmul_activations())
    with pytest.raises(ValueError, match=f"activation must be {names}, got 'int4'"):
        _C.qmatmul(q.packed(), x, None, y, activation="int4")
    with pytest.raises(ValueError, match=f"backend must be {alternatives(_C.qmatmul_backends())}, got 'mkl'"):
        _C.qmatmul(q.packed(), x, None, y, backend="mkl")
    with pytest.raises(ValueError, match="activation must be one of"):
        qmatmul(x, q, activation="int4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_cuda_backend_is_accepted_and_an_unknown_one_refused():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=gen)
    x = torch.randn(4, 128, generator=gen).half().cuda()  # <= 8 rows, float16: every path takes it
    q = quantize(w, "int4").to("cuda")
    ref = x.float() @ q.dequantize("float32").T
    for backend in _C.cuda_qmatmul_backends():
        y = qmatmul(x, q, backend=backend)
        torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)
    names = alternatives(_C.cuda_qmatmul_backends())
    y = torch.empty(4, 64, dtype=torch.float16, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    with pytest.raises(ValueError, match=f"CUDA backend must be {names}, got 'cublas'"):
        _C.cuda_qmatmul(
            q.format, q._option_group_size, q.symmetric, q.tensors["data"], q._scales(), None, 64, 128,
            x, None, y, activation="float", path="cublas", cuda_stream=stream,
        )  # fmt: skip


def test_every_sparse_pattern_and_value_type_is_accepted_and_unknown_ones_refused(rng):
    w = gaussian(rng, (16, 64))
    x = gaussian(rng, (3, 64))
    for p in _C.sparse_patterns():
        sw = sparsify(w, p["name"], prune=p["m"] > 0)  # packs through _C.pack_nm / _C.pack_csr
        assert sw.n_m == (p["n"], p["m"])
        if p["m"]:
            # index_bits sizes the index streams pack_nm checked against its own layout
            assert sw.tensors["indices"].shape[1] == -(-sw.kept_per_row * p["index_bits"] // 8)
        np.testing.assert_allclose(spmm(x, sw), x @ sw.to_dense().T, rtol=1e-5, atol=1e-5)
    nm = alternatives(f"{p['n']}:{p['m']}" for p in _C.sparse_patterns() if p["m"]).replace("'", "")
    with pytest.raises(ValueError, match=f"pattern must be {nm}, got 3:4"):
        _C.pack_nm(3, 4, 16, 64, "float32", np.zeros((16, 48), np.float32), None, None, 0,
                   np.zeros((16, 12), np.uint8))  # fmt: skip
    with pytest.raises(ValueError, match="pattern must be one of"):
        sparsify(w, "1:4", prune=True)
    for values in _C.sparse_value_types():
        sw = sparsify(w, "2:4", values=values, prune=True)
        assert isinstance(sw, SparseTensor) and sw.values == values
    sw = sparsify(w, "2:4", prune=True)
    names = alternatives(_C.sparse_value_types())
    with pytest.raises(ValueError, match=f"values must be {names}, got 'fp8'"):
        _C.pack_nm(2, 4, 16, 64, "fp8", sw.tensors["values"], None, None, 0, sw.tensors["indices"])
    with pytest.raises(ValueError, match="values must be one of"):
        sparsify(w, "2:4", values="fp8", prune=True)


def test_every_spmm_activation_is_accepted_and_an_unknown_one_refused(rng):
    w, x = gaussian(rng, (16, 64)), gaussian(rng, (3, 64))
    sw = sparsify(w, "2:4", values="int4", prune=True)
    y = np.empty((3, 16), np.float32)
    for act in _C.spmm_activations():
        _C.spmm(sw.packed(), x, None, y, activation=act)
        np.testing.assert_allclose(y, spmm(x, sw, activation=act), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(y, x @ sw.to_dense().T, rtol=0.05, atol=0.05 * np.abs(y).max())
    names = alternatives(_C.spmm_activations())
    with pytest.raises(ValueError, match=f"activation must be {names}, got 'int8_row'"):
        _C.spmm(sw.packed(), x, None, y, activation="int8_row")
    with pytest.raises(ValueError, match=f"activation must be {names}, got 'int8_row'"):
        spmm(x, sw, activation="int8_row")
