"""Quantized matmul: ``y = x @ W.T (+ bias)`` with W a :class:`QuantizedTensor`."""

from __future__ import annotations

from typing import Any

from .. import _C
from .._cuda import is_cuda, stream_of
from .._tensor import FLOAT_DTYPES, check_linear_input, dtype_name, empty, float32_bias, kernel_input
from .quant import QuantizedTensor

# Named once, in cpp/bindings/qmatmul.cpp.
ACTIVATIONS: tuple[str, ...] = tuple(_C.qmatmul_activations())
BACKENDS: tuple[str, ...] = tuple(_C.qmatmul_backends())
CUDA_BACKENDS: tuple[str, ...] = tuple(_C.cuda_qmatmul_backends())


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

    On a CUDA tensor ``x`` (with ``qw`` on the same device) the GPU kernels run on the
    current stream, reading the quantized buffers as they are: ``backend`` is then one of
    ``CUDA_BACKENDS``: ``"gemv"`` (decode, at most 8 rows; int4, nf4, int8), ``"tensor_core"``
    (float16 / bfloat16 activations; int4, nf4, int8), ``"dequantize_gemm"`` (any format:
    dequantize, then cuBLASLt), or ``"auto"`` to choose by format, dtype and rows.
    ``activation="int8_row"`` is W8A8 on cuBLASLt (int8 weights with one scale per row).

    NaN in, NaN out: a row of x holding NaN or Inf gives a row of y that is all NaN, on every
    CPU path (each activation mode, ISA and backend; the int8 modes cannot code such a value
    and must not hide it in a finite row). On CUDA a NaN row is all NaN too, W8A8 included;
    the float paths there give an Inf row IEEE's +-Inf/NaN mix.
    """
    if not isinstance(qw, QuantizedTensor):
        raise TypeError(f"qw must be a QuantizedTensor, got {type(qw).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if is_cuda(x):
        return _cuda_qmatmul(x, qw, bias, activation, backend)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    n, k = qw.shape
    dtype = check_linear_input(x, k, "qmatmul")
    lead = tuple(x.shape[:-1])
    x2 = kernel_input(x).reshape(-1, k)
    y = empty(x2, (x2.shape[0], n), dtype)
    _C.qmatmul(qw.packed(), x2, float32_bias(bias, n), y, activation=activation, isa=isa, backend=backend)
    return y.reshape(*lead, n)


def _cuda_qmatmul(x: Any, qw: QuantizedTensor, bias: Any, activation: str, backend: str) -> Any:
    if backend not in CUDA_BACKENDS:
        raise ValueError(f"on CUDA, backend must be one of {CUDA_BACKENDS}, got {backend!r}")
    n, k = qw.shape
    data = qw.tensors["data"]
    if not is_cuda(data) or data.device != x.device:
        raise ValueError(f"x is on {x.device} but the QuantizedTensor is on {getattr(data, 'device', 'cpu')}")
    if len(x.shape) == 0 or x.shape[-1] != k:
        raise ValueError(f"x must be [..., in_features={k}], got shape {tuple(x.shape)}")
    if dtype_name(x) not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {dtype_name(x)}")
    lead = tuple(x.shape[:-1])
    x2 = kernel_input(x).reshape(-1, k)
    y = empty(x2, (x2.shape[0], n), dtype_name(x))
    _C.cuda_qmatmul(
        qw.format, qw._option_group_size, qw.symmetric, data, qw._scales(), qw.tensors.get("zero_points"),
        n, k, x2, float32_bias(bias, n), y, activation=activation, path=backend, cuda_stream=stream_of(x),
    )  # fmt: skip
    return y.reshape(*lead, n)
