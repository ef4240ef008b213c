"""Quantized matmul: ``y = x @ W.T (+ bias)`` with W a :class:`QuantizedTensor`."""

from __future__ import annotations

from typing import Any

from .. import _C
from .._tensor import check_linear_input, empty, float32_bias, kernel_input
from .quant import QuantizedTensor

ACTIVATIONS = ("float", "int8", "int8_row")
BACKENDS = ("auto", "kernels", "onednn")


def qmatmul(
    x: Any,
    qw: QuantizedTensor,
    *,
    bias: Any = None,
    activation: str = "float",
    isa: str = "auto",
    backend: str = "auto",
) -> Any:
    """``x [..., in_features] @ W.T + bias`` -> ``[..., out_features]`` in x's framework and dtype.

    ``activation="float"`` multiplies the float activations with weights decoded in
    registers. ``activation="int8"`` first quantizes each activation row to int8 in blocks
    of 32 (symmetric, absmax/127) and uses integer dot products (AVX-512 VNNI, AVX2
    maddubs): faster on 4-bit, int8 and ternary weights, at the cost of that rounding of x
    (and, for nf4, of rounding the codebook to int8: round(127 * code) / 127 * absmax).
    ``activation="int8_row"`` uses one scale per activation row (per token) instead: W8A8
    as vLLM and SmoothQuant mean it. With per-channel int8 weights and 64 or more rows it
    runs on oneDNN's int8 matmul where slmops was built with oneDNN (``backend="auto"``;
    below 64 rows our kernels are faster); ``backend="kernels"`` forces our kernels,
    ``backend="onednn"`` requires oneDNN.
    The weight is packed for the kernels on first use and the packing is kept.
    """
    if not isinstance(qw, QuantizedTensor):
        raise TypeError(f"qw must be a QuantizedTensor, got {type(qw).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    n, k = qw.shape
    dtype = check_linear_input(x, k, "qmatmul")
    lead = tuple(x.shape[:-1])
    x2 = kernel_input(x).reshape(-1, k)
    y = empty(x2, (x2.shape[0], n), dtype)
    _C.qmatmul(qw.packed(), x2, float32_bias(bias, n), y, activation=activation, isa=isa, backend=backend)
    return y.reshape(*lead, n)
