"""Sparse formats, spmm and SparseLinear against dense references (float64 numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import slmops
import torch
from slmops.nn import SparseLinear
from slmops.ops import SparseTensor, quantize, sparsify, spmm

ISAS = slmops.build_info()["cpu_isas_available"]
rng = np.random.default_rng(0)


def nm_sparse(rows: int, k: int, n: int, m: int, seed: int = 0) -> np.ndarray:
    """A dense matrix with exactly n random nonzeros in every group of m (the reference)."""
    r = np.random.default_rng(seed)
    w = r.standard_normal((rows, k)).astype(np.float32)
    ranks = r.random((rows, k // m, m)).argsort(2).argsort(2)
    return np.where(ranks.reshape(rows, k) < n, w, 0.0).astype(np.float32)


def unstructured(rows: int, k: int, sparsity: float, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    w = r.standard_normal((rows, k)).astype(np.float32)
    w[r.random((rows, k)) < sparsity] = 0.0
    return w


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
@pytest.mark.parametrize("shape", [(1, 8), (7, 40), (33, 264)])
def test_nm_round_trip_is_exact(pattern, n, m, shape):
    w = nm_sparse(*shape, n, m)
    sw = sparsify(w, pattern)
    assert sw.kept_per_row == shape[1] // 2 and sw.density == 0.5
    np.testing.assert_array_equal(sw.to_dense(), w)
    # and back: the dense of a sparse tensor gives the same buffers
    again = sparsify(sw.to_dense(), pattern)
    for name, t in sw.tensors.items():
        np.testing.assert_array_equal(again.tensors[name], t)


def test_nm_groups_with_fewer_nonzeros_and_torch_input():
    w = nm_sparse(5, 32, 2, 4)
    w[1] = 0.0  # an all-zero row
    w[2, :4] = [0.0, 0.0, 3.0, 0.0]  # one nonzero in a group
    sw = sparsify(torch.from_numpy(w).to(torch.bfloat16).float(), "2:4")
    np.testing.assert_array_equal(sw.to_dense(), torch.from_numpy(w).to(torch.bfloat16).float().numpy())


def test_index_bits_are_the_documented_layout():
    # Row [0, 5, 0, 6 | 7, 0, 0, 0]: kept positions (1, 3) and (0, 1): 2-bit fields 1, 3, 0, 1.
    sw = sparsify(np.array([[0, 5, 0, 6, 7, 0, 0, 0]], np.float32), "2:4")
    np.testing.assert_array_equal(sw.tensors["values"], [[5, 6, 7, 0]])
    assert sw.tensors["indices"].tolist() == [[1 | 3 << 2 | 0 << 4 | 1 << 6]]
    # 4:8, 3-bit fields (1, 3, 6, 7) little-endian: bits 001 110 011 111 (LSB first).
    sw = sparsify(np.array([[0, 1, 0, 2, 0, 0, 3, 4]], np.float32), "4:8")
    value = 1 | 3 << 3 | 6 << 6 | 7 << 9
    assert sw.tensors["indices"].tolist() == [[value & 0xFF, value >> 8]]


def test_pattern_violation_names_the_group_unless_pruning():
    w = nm_sparse(4, 16, 2, 4)
    w[3, 8:12] = [1.0, 2.0, 3.0, 0.0]
    with pytest.raises(ValueError, match=r"row 3, columns 8-11 hold 3 nonzeros"):
        sparsify(w, "2:4")
    pruned = sparsify(w, "2:4", prune=True).to_dense()
    np.testing.assert_array_equal(pruned[3, 8:12], [0.0, 2.0, 3.0, 0.0])  # the 2 largest kept
    dense = rng.standard_normal((6, 24)).astype(np.float32)
    kept = sparsify(dense, "4:8", prune=True).to_dense().reshape(6, 3, 8)
    order = np.sort(np.abs(dense.reshape(6, 3, 8)), axis=2)
    np.testing.assert_array_equal(np.sort(np.abs(kept), axis=2)[:, :, 4:], order[:, :, 4:])


def test_csr_round_trip_and_index_width():
    w = unstructured(9, 50, 0.8)
    w[4] = 0.0
    sw = sparsify(w, "csr")
    np.testing.assert_array_equal(sw.to_dense(), w)
    assert sw.tensors["cols"].dtype == np.int16 and sw.nnz == np.count_nonzero(w)
    wide = sparsify(unstructured(2, 40000, 0.999), "csr")
    assert wide.tensors["cols"].dtype == np.int32


def test_quantized_values_are_the_quantization_formats():
    w = nm_sparse(16, 256, 2, 4)
    sw = sparsify(w, "2:4", values="int4", group_size=32)
    kept = w.reshape(16, 64, 4)[np.abs(w.reshape(16, 64, 4)) > 0].reshape(16, 128)
    expected = np.asarray(quantize(kept, "int4", group_size=32).dequantize("float32"))
    np.testing.assert_array_equal(sw.kept_values(), expected)
    assert np.all((sw.to_dense() != 0) <= (w != 0))  # zeros stay zeros
    s8 = sparsify(w, "2:4", values="int8")
    np.testing.assert_array_equal(s8.kept_values(), np.asarray(quantize(kept, "int8").dequantize("float32")))
    bf = sparsify(w, "2:4", values="bfloat16")
    np.testing.assert_array_equal(bf.kept_values(), torch.from_numpy(kept).bfloat16().float().numpy())
    # bytes: 2:4 + int4 g128 is the most compact, about 0.39 bytes a weight
    compact = sparsify(nm_sparse(64, 1024, 2, 4), "2:4", values="int4", group_size=128)
    assert compact.nbytes / (64 * 1024) == pytest.approx(0.25 + 0.125 + 4 / 256, rel=1e-3)


def reference(x: np.ndarray, sw: SparseTensor, bias: np.ndarray | None = None) -> np.ndarray:
    y = x.astype(np.float64) @ sw.to_dense().astype(np.float64).T
    return y if bias is None else y + bias


def assert_close(y, ref, x, dense):
    mag = np.abs(x.astype(np.float64)) @ np.abs(dense.astype(np.float64)).T
    assert np.all(np.abs(np.asarray(y, np.float64) - ref) <= 1e-5 * mag + 1e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "pattern,values", [("2:4", "float32"), ("2:4", "bfloat16"), ("2:4", "int8"), ("2:4", "int4"),
                       ("4:8", "float32"), ("4:8", "int4"), ("csr", "float32")],
)  # fmt: skip
@pytest.mark.parametrize("m_rows", [1, 3, 8, 70])
def test_spmm_matches_float64_dense(isa, pattern, values, m_rows):
    rows, k = 45, 392  # tails everywhere: 196 kept values a row, 45 rows
    w = unstructured(rows, k, 0.7) if pattern == "csr" else rng.standard_normal((rows, k)).astype(np.float32)
    options = {"group_size": 16} if values == "int4" else {}
    sw = sparsify(w, pattern, values=values, prune=pattern != "csr", **options)
    x = rng.standard_normal((m_rows, k)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    y = spmm(x, sw, bias=bias, isa=isa)
    assert y.shape == (m_rows, rows) and y.dtype == np.float32
    assert_close(y, reference(x, sw, bias), x, sw.to_dense())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "pattern,values,group",
    [("2:4", "int4", 32), ("2:4", "int4", 128), ("2:4", "int8", 16), ("4:8", "int4", 16)],
)
@pytest.mark.parametrize("m_rows", [1, 5, 9])
def test_spmm_int8_activations_multiply_the_dequantized_activations(isa, pattern, values, group, m_rows):
    from quant_reference import int8

    rows, k = 21, 1040  # 520 kept values a row: 8 integer-kernel steps and a tail
    sw = sparsify(rng.standard_normal((rows, k)).astype(np.float32), pattern, values=values, group_size=group,
                  symmetric=values == "int8", prune=True)  # fmt: skip
    x = rng.standard_normal((m_rows, k)).astype(np.float32)
    q, s = int8(x, 32)  # the activation mode's quantization, from the format's definition
    xhat = q.astype(np.float32) * np.repeat(s, 32, axis=1)[:, :k]
    y = spmm(torch.from_numpy(x), sw, activation="int8", isa=isa)
    assert_close(y.numpy(), reference(xhat, sw, None), xhat, sw.to_dense())
    with pytest.raises(ValueError, match="int8 or int4 values"):
        spmm(x, sparsify(sw.to_dense(), pattern), activation="int8")
    with pytest.raises(ValueError, match="'float' or 'int8'"):
        spmm(x, sw, activation="int4")


def test_spmm_keeps_framework_dtype_and_leading_dims():
    sw = sparsify(rng.standard_normal((24, 64)).astype(np.float32), "2:4", prune=True)
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    y = spmm(x, sw)
    assert y.shape == (2, 3, 24) and y.dtype == torch.bfloat16
    ref = x.float().numpy().reshape(6, 64) @ sw.to_dense().T
    np.testing.assert_allclose(y.float().numpy().reshape(6, 24), ref, rtol=2e-2, atol=2e-2)
    assert spmm(np.zeros((0, 64), np.float32), sw).shape == (0, 24)  # no rows: an empty result


def test_bad_inputs_raise_clear_errors():
    w = rng.standard_normal((8, 16)).astype(np.float32)
    sw = sparsify(w, "2:4", prune=True)
    with pytest.raises(ValueError, match="in_features=16"):
        spmm(np.zeros((2, 12), np.float32), sw)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        spmm(np.zeros((2, 16), np.int32), sw)
    with pytest.raises(ValueError, match="bias must have shape"):
        spmm(np.zeros((2, 16), np.float32), sw, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="multiple of 4"):
        sparsify(rng.standard_normal((4, 18)).astype(np.float32), "2:4", prune=True)
    with pytest.raises(ValueError, match="empty"):
        sparsify(np.zeros((0, 16), np.float32), "2:4")
    with pytest.raises(ValueError, match="2-D"):
        sparsify(np.zeros(16, np.float32), "2:4")
    with pytest.raises(ValueError, match="non-finite value at row 1, column 2"):
        bad = np.zeros((2, 8), np.float32)
        bad[1, 2] = np.nan
        sparsify(bad, "csr")
    with pytest.raises(ValueError, match="pattern must be one of"):
        sparsify(w, "1:4")
    with pytest.raises(ValueError, match="csr stores float32"):
        sparsify(w, "csr", values="int4")
    with pytest.raises(ValueError, match="multiple of 16 kept values"):
        w96 = rng.standard_normal((4, 96)).astype(np.float32)
        sparsify(w96, "2:4", values="int8", group_size=24, prune=True)
    # buffers that do not match the layout are refused when the tensor is made
    with pytest.raises(ValueError, match="indices"):
        SparseTensor("2:4", (8, 16), {"values": sw.tensors["values"], "indices": sw.tensors["indices"][:4]})
    rows = {"row_ptr": np.array([0, 2, 3], np.int64), "cols": np.array([3, 1, 0], np.int16)}
    with pytest.raises(ValueError, match="row 0 must be strictly increasing"):
        SparseTensor("csr", (2, 4), rows | {"values": np.ones(3, np.float32)})


def test_sparse_linear_forward_backward_and_state_dict():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 40)
    layer = SparseLinear.from_linear(linear, "2:4", prune=True)
    dense = torch.from_numpy(layer.sparse_weight.to_dense())
    x = torch.randn(3, 5, 64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = layer(x)
    y_ref = torch.nn.functional.linear(x_ref, dense, linear.bias)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    assert layer.bias.grad is not None
    # the weight is frozen: not a parameter
    assert [n for n, _ in layer.named_parameters()] == ["bias"]
    # state_dict round trip into a fresh module of the same layout (CSR changes its nnz)
    for pattern in ("2:4", "csr"):
        src = SparseLinear.from_linear(linear, pattern, prune=pattern != "csr")
        dst = SparseLinear(64, 40, pattern=pattern)
        dst.load_state_dict(src.state_dict())
        torch.testing.assert_close(dst(x.detach()), src(x.detach()))
    with pytest.raises(ValueError, match="does not match"):
        SparseLinear(64, 40, pattern="4:8").load_state_dict(layer.state_dict())


def test_sparse_linear_int8_activations_run_spmm_int8():
    torch.manual_seed(1)
    linear = torch.nn.Linear(256, 24)
    layer = SparseLinear.from_linear(linear, "2:4", values="int4", prune=True, activation="int8")
    assert "activation=int8" in repr(layer)
    x = torch.randn(2, 256)
    expected = spmm(x, layer.sparse_weight, bias=linear.bias.detach(), activation="int8")
    torch.testing.assert_close(layer(x), expected)
    assert not torch.allclose(layer(x), spmm(x, layer.sparse_weight, bias=linear.bias.detach()))
    with pytest.raises(ValueError, match="int8 or int4 values"):
        SparseLinear.from_linear(linear, "2:4", prune=True, activation="int8")


def test_sparse_linear_requires_the_pattern_unless_pruning():
    linear = torch.nn.Linear(16, 4)
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        SparseLinear.from_linear(linear, "2:4")
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        SparseLinear.from_linear(torch.nn.Conv1d(1, 1, 1))
