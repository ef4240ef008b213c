"""Sparse weights: ``sparsify(w, pattern) -> SparseTensor`` and ``spmm(x, sw)``.

Patterns (the layouts are documented once, in ``cpp/include/slmops/spmm.h``):

=========  ==========================================================================
``2:4``    2 of every 4 consecutive weights of a row kept: the kept values in order plus a
           2-bit in-group index each; 50% sparse, 0.53 of fp32's bytes with fp32 values
``4:8``    4 of every 8 kept, 3-bit indices; the same density with a freer choice
``csr``    unstructured: row pointers (int64), column indices (int16 where
           in_features <= 32768, else int32) and fp32 values; pays from high sparsity
=========  ==========================================================================

n:m values are ``float32``, ``bfloat16`` (round to nearest even), or ``int8`` / ``int4``
codes quantized as ``slmops.ops.quantize`` does, with groups running along the kept
values of a row (a multiple of 16 of them, or the whole row): 2:4 with int4 values is
the most compact layout (0.39 bytes a weight with groups of 128).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _C
from .._tensor import (
    FLOAT_DTYPES,
    check_array,
    check_linear_input,
    dtype_name,
    empty,
    float32_bias,
    is_torch,
    kernel_input,
)
from .quant import QuantizedTensor, quantize

# Named once, in C++: the n:m patterns in cpp/include/slmops/spmm.h, the rest in
# cpp/bindings/sparse.cpp.
_LAYOUTS: dict[str, dict[str, Any]] = {p["name"]: p for p in _C.sparse_patterns()}
PATTERNS: tuple[str, ...] = tuple(_LAYOUTS)
VALUE_TYPES: tuple[str, ...] = tuple(_C.sparse_value_types())
SPMM_ACTIVATIONS: tuple[str, ...] = tuple(_C.spmm_activations())
_N_M = {name: (p["n"], p["m"]) for name, p in _LAYOUTS.items() if p["m"]}
_INDEX_BITS = {p["m"]: p["index_bits"] for p in _LAYOUTS.values() if p["m"]}


class SparseTensor:
    """A sparse 2-D weight ``[out_features, in_features]``: its buffers (numpy arrays, or
    torch CPU tensors sharing their memory) and the options that say how to read them.

    n:m buffers: ``values`` (float32 ``[N, kept]``, bfloat16 bits as uint16, int8 codes, or
    int4 codes two a byte), ``indices`` (uint8 bit streams, one per row), and for int8/int4
    ``scales`` (float32 ``[N, groups]``) and ``zero_points`` (int4 asymmetric).
    csr buffers: ``row_ptr``, ``cols``, ``values``.
    """

    def __init__(
        self,
        pattern: str,
        shape: tuple[int, int],
        tensors: dict[str, Any],
        *,
        values: str = "float32",
        group_size: int = 0,
        symmetric: bool = True,
    ) -> None:
        if pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
        if values not in VALUE_TYPES:
            raise ValueError(f"values must be one of {VALUE_TYPES}, got {values!r}")
        if pattern == "csr" and values != "float32":
            raise ValueError(f"csr stores float32 values, got values={values!r}")
        self.pattern = pattern
        self.shape = (int(shape[0]), int(shape[1]))
        self.values = values
        self.group_size = int(group_size)
        self.symmetric = bool(symmetric)
        self.tensors = dict(tensors)
        self._packed: Any = None
        if not any(is_torch(t) and t.device.type != "cpu" for t in self.tensors.values()):
            self.packed()  # validates the buffers against the layout now, not at the first matmul

    @property
    def n_m(self) -> tuple[int, int]:
        """(n, m) of an n:m pattern; (0, 0) for csr."""
        return _N_M.get(self.pattern, (0, 0))

    @property
    def kept_per_row(self) -> int:
        n, m = self.n_m
        return self.shape[1] // m * n

    @property
    def nnz(self) -> int:
        """Stored values (for n:m this counts kept zeros too)."""
        if self.pattern == "csr":
            return int(self.tensors["row_ptr"][-1])
        return self.shape[0] * self.kept_per_row

    @property
    def density(self) -> float:
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of all buffers: values, indices, scales and zero points."""
        return int(sum(_nbytes(t) for t in self.tensors.values()))

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    def __repr__(self) -> str:
        quant = ""
        if self.values in ("int8", "int4"):
            quant = f", group_size={self.group_size}, symmetric={self.symmetric}"
        return (
            f"SparseTensor({self.pattern}, shape={self.shape}, values={self.values}{quant}, "
            f"density={self.density:.3f}, bits_per_weight={self.bits_per_weight:.3f})"
        )

    def _quantized_values(self) -> QuantizedTensor:
        tensors = {"data": self.tensors["values"], "scales": self.tensors["scales"]}
        if "zero_points" in self.tensors:
            tensors["zero_points"] = self.tensors["zero_points"]
        return QuantizedTensor(
            self.values,
            (self.shape[0], self.kept_per_row),
            tensors,
            group_size=self.group_size,
            symmetric=self.symmetric,
        )

    def kept_values(self) -> np.ndarray:
        """The stored values as float32: ``[N, kept]`` for n:m, ``[nnz]`` for csr."""
        v = self.tensors["values"]
        if self.values == "float32":
            return _numpy(v).astype(np.float32, copy=False)
        if self.values == "bfloat16":
            return (_numpy(v).astype(np.uint32) << 16).view(np.float32)
        return np.asarray(self._quantized_values().dequantize("float32"))

    def columns(self) -> np.ndarray:
        """Column of every stored value: ``[N, kept]`` for n:m, ``[nnz]`` for csr (int64)."""
        if self.pattern == "csr":
            return _numpy(self.tensors["cols"]).astype(np.int64)
        n, m = self.n_m
        bits = _INDEX_BITS[m]
        rows, kept = self.shape[0], self.kept_per_row
        stream = np.unpackbits(_numpy(self.tensors["indices"]), axis=1, bitorder="little")
        fields = stream[:, : kept * bits].reshape(rows, kept, bits).astype(np.int64)
        in_group = fields @ (1 << np.arange(bits, dtype=np.int64))
        return m * (np.arange(kept, dtype=np.int64) // n) + in_group

    def to_dense(self) -> np.ndarray:
        """The weight as a dense float32 numpy array (exact: the stored values in place)."""
        dense = np.zeros(self.shape, np.float32)
        if self.pattern == "csr":
            row_ptr = _numpy(self.tensors["row_ptr"])
            rows = np.repeat(np.arange(self.shape[0]), np.diff(row_ptr))
            dense[rows, self.columns()] = self.kept_values()
        else:
            np.put_along_axis(dense, self.columns(), self.kept_values(), axis=1)
        return dense

    def __getstate__(self) -> dict[str, Any]:
        # The kernels' pack is a view of these buffers, not data: a copy (copy.deepcopy of a
        # model that already ran) packs its own buffers again on first use.
        return {**self.__dict__, "_packed": None}

    def packed(self) -> Any:
        """The weight as the spmm kernels read it (borrowing these buffers; made once)."""
        if self._packed is None:
            t = self.tensors
            for name, buf in t.items():
                if is_torch(buf) and buf.device.type != "cpu":
                    raise ValueError(f"spmm runs on the CPU; the sparse buffer {name!r} is on {buf.device}")
            if self.pattern == "csr":
                self._packed = _C.pack_csr(*self.shape, t["row_ptr"], t["cols"], t["values"])
            else:
                n, m = self.n_m
                quantized = self.values in ("int8", "int4")
                self._packed = _C.pack_nm(
                    n, m, *self.shape, self.values, t["values"],
                    t.get("scales"), t.get("zero_points"),
                    self._quantized_values().group_size if quantized else 0, t["indices"],
                )  # fmt: skip
        return self._packed


def _numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if is_torch(t) else np.asarray(t)


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if is_torch(t) else t.nbytes


def _dense_float32(w: Any) -> np.ndarray:
    check_array(w, "w")
    if len(w.shape) != 2:
        raise ValueError(f"w must be 2-D [out_features, in_features], got shape {tuple(w.shape)}")
    if min(w.shape) == 0:
        raise ValueError(f"w is empty (shape {tuple(w.shape)}); nothing to sparsify")
    if dtype_name(w) not in FLOAT_DTYPES:
        raise TypeError(f"w must be float32, float16 or bfloat16, got {dtype_name(w)}")
    a = w.detach().float().cpu().numpy() if is_torch(w) else np.asarray(w, dtype=np.float32)
    if not np.isfinite(a).all():
        row, col = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"w holds a non-finite value at row {row}, column {col}")
    return np.ascontiguousarray(a)


def sparsify(
    w: Any,
    pattern: str = "2:4",
    *,
    values: str = "float32",
    group_size: int | None = None,
    symmetric: bool = True,
    prune: bool = False,
) -> SparseTensor:
    """Stores the 2-D weight ``w`` (numpy or torch, any float dtype) sparse.

    n:m (``'2:4'``, ``'4:8'``): every group of m consecutive weights of a row must hold at
    most n nonzeros, else ``ValueError`` names the first group that does not; with
    ``prune=True`` the n largest magnitudes of each group are kept instead. Groups with fewer
    nonzeros keep zeros in the free slots. ``values``: 'float32' (exact), 'bfloat16', 'int8'
    or 'int4' (``group_size`` kept values per scale, default 32 for int4 and the whole row
    for int8; ``symmetric`` as in ``quantize``). ``'csr'``: the nonzeros of each row, fp32.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if values not in VALUE_TYPES:
        raise ValueError(f"values must be one of {VALUE_TYPES}, got {values!r}")
    a = _dense_float32(w)
    rows, k = a.shape
    if pattern == "csr":
        if values != "float32":
            raise ValueError(f"csr stores float32 values, got values={values!r}")
        if prune:
            raise ValueError("prune=True selects n:m groups; csr stores every nonzero as it is")
        nonzero = a != 0
        row_ptr = np.concatenate([[0], np.cumsum(nonzero.sum(1))]).astype(np.int64)
        cols = np.nonzero(nonzero)[1].astype(np.int16 if k <= 32768 else np.int32)
        tensors = {"row_ptr": row_ptr, "cols": cols, "values": a[nonzero]}
        return SparseTensor("csr", (rows, k), tensors)

    n, m = _N_M[pattern]
    if k % m:
        raise ValueError(f"in_features ({k}) must be a multiple of {m} for {pattern}")
    groups = a.reshape(rows, k // m, m)
    if not prune:
        counts = (groups != 0).sum(2)
        bad = np.argwhere(counts > n)
        if len(bad):
            r, g = bad[0]
            raise ValueError(
                f"w is not {pattern} sparse: row {r}, columns {g * m}-{g * m + m - 1} hold {counts[r, g]} "
                f"nonzeros (at most {n} of every {m}; {len(bad)} such groups in all). Prune it to the "
                f"pattern first (slmops.prune_model(..., pattern={pattern!r})) or pass prune=True to keep "
                f"the {n} largest of every {m}"
            )
    # The n largest magnitudes of each group (every nonzero when there are at most n; ties
    # and free slots go to the lowest positions), in column order.
    order = np.argsort(-np.abs(groups), axis=2, kind="stable")[:, :, :n]
    in_group = np.sort(order, axis=2)
    kept = np.take_along_axis(groups, in_group, axis=2).reshape(rows, -1)
    bits = _INDEX_BITS[m]
    fields = (in_group.reshape(rows, -1, 1) >> np.arange(bits)) & 1
    indices = np.packbits(fields.reshape(rows, -1).astype(np.uint8), axis=1, bitorder="little")
    tensors = {"indices": np.ascontiguousarray(indices)}
    options: dict[str, Any] = {"values": values}
    if values == "float32":
        tensors["values"] = np.ascontiguousarray(kept)
    elif values == "bfloat16":
        tensors["values"] = _to_bf16_bits(kept)
    else:
        q = quantize(np.ascontiguousarray(kept), values, group_size=group_size, symmetric=symmetric)
        tensors["values"] = q.tensors["data"]
        tensors["scales"] = q.tensors["scales"]
        if "zero_points" in q.tensors:
            tensors["zero_points"] = q.tensors["zero_points"]
        options |= {"group_size": q.group_size, "symmetric": q.symmetric}
    return SparseTensor(pattern, (rows, k), tensors, **options)


def _to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even, as torch rounds."""
    import torch

    return torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).copy()


def _alternatives(names: tuple[str, ...]) -> str:
    """The names as a message lists them: 'a', 'b' or 'c'."""
    quoted = [repr(n) for n in names]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else "".join(quoted)


def check_activation(activation: str, values: str, pattern: str) -> str:
    """``activation`` if spmm can take it for a weight of these ``values``, else ValueError."""
    if activation not in SPMM_ACTIVATIONS:
        raise ValueError(f"activation must be {_alternatives(SPMM_ACTIVATIONS)}, got {activation!r}")
    if activation == "int8" and values not in ("int8", "int4"):
        raise ValueError(
            f"activation='int8' needs int8 or int4 values; this {pattern} weight stores {values} "
            "(float values multiply float activations)"
        )
    return activation


def spmm(x: Any, sw: SparseTensor, *, bias: Any = None, activation: str = "float", isa: str = "auto") -> Any:
    """``x [..., in_features] @ W.T + bias`` -> ``[..., out_features]`` in x's framework and
    dtype, on the sparse kernels (CPU; the products are fp32).

    ``activation="int8"`` (n:m weights with int8/int4 values): each row of x is quantized to
    int8 in blocks of 32 first, as ``qmatmul(..., activation="int8")`` does, and the result
    is ``W @ x^`` for the dequantized x^. 2:4 int4 weights (groups of 16, 32 or a multiple
    of 64 kept values) then run on integer dot products on AVX-512 CPUs at decode sizes
    (fewer than 8 rows); every other case runs the float kernels on x^.

    NaN in, NaN out: a row of x holding NaN or Inf gives a row of y that is all NaN, on every
    path, as torch's dense product would (a sparse product alone reaches only the outputs
    whose kept weights meet that column, and the int8 mode none)."""
    if not isinstance(sw, SparseTensor):
        raise TypeError(f"sw must be a SparseTensor, got {type(sw).__name__}")
    check_activation(activation, sw.values, sw.pattern)
    n, k = sw.shape
    dtype = check_linear_input(x, k, "spmm")
    lead = tuple(x.shape[:-1])
    x2 = kernel_input(x.float() if is_torch(x) else x.astype(np.float32, copy=False)).reshape(-1, k)
    y = empty(x2, (x2.shape[0], n), "float32")
    if sw.pattern == "csr":
        _C.spmm(sw.packed(), x2, float32_bias(bias, n), y, isa=isa)
    else:
        _C.spmm(sw.packed(), x2, float32_bias(bias, n), y, isa=isa, activation=activation)
    y = y.to(x.dtype) if is_torch(x) else y.astype(dtype, copy=False)
    return y.reshape(*lead, n)
