"""GPTQ (Frantar et al., 2022) for one linear layer, on the C++ kernels.

Given the layer's weight W [N, K] and the Hessian of its inputs H = sum x x^T [K, K],
GPTQ quantizes W one input column at a time and spreads each column's rounding error
over the columns not yet quantized, weighted by the inverse Hessian, so that the layer's
outputs on the calibration inputs change as little as possible. The result is an int4 or
int8 :class:`~slmops.ops.QuantizedTensor` with the RTN conventions of ``slmops.quantize``
(the same scales a group would get from RTN, computed on the error-updated weights), so
every kernel and exporter takes it.

Options: ``bits`` 2-4 (int4 storage; 2 and 3 bits use the codes 0..2^bits-1 of the int4
container with explicit zero points) or 8 (int8, symmetric); ``group_size`` (0 = one
group per row, int8 only); ``act_order`` processes columns by decreasing Hessian diagonal
with *static groups* (scales computed from the original weights before the loop), which
keeps groups contiguous in the stored layout; ``damp`` adds damp * mean(diag H) to the
diagonal; ``mse`` searches each group's range (shrunk by 1.00, 0.99, ... 0.21) for the
least squared rounding error instead of taking min/max (GPTQ's ``Quantizer(mse=True)``).
"""

from __future__ import annotations

import numpy as np

from ..ops import QuantizedTensor, cholesky_inverse_upper, gptq_grid_params, gptq_quantize
from .options import GPTQ_BITS, HessianOptions, check_damp

BITS = GPTQ_BITS


def check_options(bits: int, group_size: int, symmetric: bool) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    if bits == 8 and not symmetric:
        raise ValueError("8-bit GPTQ is symmetric (slmops int8); use symmetric=True")
    if bits < 8 and (group_size < 16 or group_size & (group_size - 1)):
        raise ValueError(
            f"{bits}-bit GPTQ needs group_size a power of two >= 16 (int4 storage), got {group_size}"
        )
    if bits == 8 and group_size and (group_size < 16 or group_size & (group_size - 1)):
        raise ValueError(f"int8 group_size must be 0 (per row) or a power of two >= 16, got {group_size}")


def to_quantized(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int, group_size: int,
                  symmetric: bool) -> QuantizedTensor:  # fmt: skip
    n, k = codes.shape
    if bits == 8:
        data = (codes.astype(np.int16) - 128).astype(np.int8)
        return QuantizedTensor("int8", (n, k), {"data": data, "scales": scales}, group_size=group_size)
    groups = scales.shape[1]
    padded = np.empty((n, groups * group_size), np.uint8)
    padded[:, :k] = codes
    padded[:, k:] = np.repeat(zeros[:, -1:], groups * group_size - k, axis=1)  # padding = value 0
    tensors = {"data": padded[:, 0::2] | (padded[:, 1::2] << 4), "scales": scales}
    sym = symmetric and bits == 4  # zero point 8 everywhere: the symmetric int4 layout
    if not sym:
        z = np.zeros((n, groups + groups % 2), np.uint8)
        z[:, :groups] = zeros
        tensors["zero_points"] = z[:, 0::2] | (z[:, 1::2] << 4)
    return QuantizedTensor("int4", (n, k), tensors, group_size=group_size, symmetric=sym)


def damped(weight: np.ndarray, hessian: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """Float32 copies of a weight [N, K] and its Hessian [K, K] made ready for the inverse
    factor (GPTQ and SparseGPT): an input that was always zero gets a unit diagonal and its
    weights zero (they cannot matter), then damp * mean(diag H) is added to the diagonal."""
    check_damp(damp)
    W = np.array(weight, dtype=np.float32, copy=True)
    H = np.array(hessian, dtype=np.float32, copy=True)
    k = W.shape[1]
    if H.shape != (k, k):
        raise ValueError(f"hessian must be [{k}, {k}] for a weight with K={k}, got {H.shape}")
    if not (np.isfinite(W).all() and np.isfinite(H).all()):
        raise ValueError("weight and hessian must be finite")
    dead = np.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.arange(k), np.arange(k)] += damp * float(np.mean(np.diagonal(H)))
    return W, H


def gptq_quantize_weight(
    weight: np.ndarray,
    hessian: np.ndarray,
    *,
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = True,
    act_order: bool = False,
    damp: float = HessianOptions.model_fields["damp"].default,
    mse: bool = False,
    block: int = 128,
    reference: bool = False,
) -> QuantizedTensor:
    """GPTQ of one weight [N, K] (float) given the Hessian [K, K] of its inputs.
    ``reference=True`` runs the scalar C++ reference loop instead of the blocked one."""
    check_options(bits, group_size, symmetric)
    W, H = damped(weight, hessian, damp)
    n, k = W.shape
    gs = group_size or k
    scales = zeros = col_group = None
    if act_order or group_size == 0:  # static groups: parameters from the weights as they are
        scales, zeros = gptq_grid_params(W, bits=bits, symmetric=symmetric, group_size=group_size, mse=mse)
        col_group = np.arange(k, dtype=np.int32) // gs
    perm = None
    if act_order:  # process columns by decreasing Hessian diagonal (the permutation costs copies)
        perm = np.argsort(-np.diagonal(H), kind="stable")
        W = np.ascontiguousarray(W[:, perm])
        H = np.ascontiguousarray(H[np.ix_(perm, perm)])
        col_group = np.ascontiguousarray(col_group[perm])
    U = cholesky_inverse_upper(H, inplace=True, reference=reference)
    codes, scales, zeros = gptq_quantize(
        W, U, bits=bits, symmetric=symmetric, group_size=group_size, col_group=col_group,
        scales=scales, zeros=zeros, block=block, mse=mse, reference=reference,
    )  # fmt: skip
    if perm is not None:
        unpermuted = np.empty_like(codes)
        unpermuted[:, perm] = codes
        codes = unpermuted
    return to_quantized(codes, scales, zeros, bits, group_size, symmetric)
