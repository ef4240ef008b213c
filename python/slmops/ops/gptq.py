"""The linear algebra of calibrated compression on the C++ kernels: the Hessian of a layer's
inputs, the upper Cholesky factor of its inverse, GPTQ's quantization grid and column loop,
and SparseGPT's. ``slmops.quantize.gptq`` (GPTQ) and ``slmops.prune`` (SparseGPT) are built
on them.

Matrices are float32, row-major, on the CPU: numpy arrays or torch CPU tensors, and outputs
come back in the framework of the weight. The arguments the kernels update in place
(``hessian`` of :func:`hessian_accumulate`, ``w`` of :func:`gptq_quantize` and
:func:`sparsegpt_prune`, ``hessian`` of :func:`cholesky_inverse_upper` with
``inplace=True``) must be float32, C-contiguous and writeable: a converted copy would take the
update instead. Read-only inputs of another float dtype are converted.

The quantization grid is GPTQ's with the conventions of ``slmops.ops.quantize`` (value =
(code - zero) * scale, codes in uint8): ``bits`` 8 symmetric is int8 (zero 128, codes
1..255), 2 to 4 bits use the int4 container, symmetric (scale = signed absmax / -2^(bits-1),
zero 2^(bits-1)) or asymmetric (zero points). ``mse`` searches each group's range for the
least squared rounding error. ``reference=True`` runs the scalar reference loops (the
oracle of the tests) instead of the blocked, parallel ones.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import _C
from .._tensor import FLOAT_DTYPES, check_array, dtype_name, empty, is_torch

# Read-only matrices may come in any of these (converted to float32); float64 is what numpy
# computes Hessians and test inputs in.
_INPUT_DTYPES = (*FLOAT_DTYPES, "float64")


class GPTQResult(NamedTuple):
    """What :func:`gptq_quantize` gives: uint8 ``codes [N, K]`` and the grid they are on,
    ``scales`` (float32) and ``zeros`` (uint8) ``[N, groups]``."""

    codes: Any
    scales: Any
    zeros: Any


class SparseGPTResult(NamedTuple):
    """What :func:`sparsegpt_prune` gives: ``mask`` (uint8 ``[N, K]``, 1 kept, 0 pruned) and,
    with ``bits > 0``, the quantized kept weights as :class:`GPTQResult` has them (None
    otherwise; a pruned weight has the zero code)."""

    mask: Any
    codes: Any = None
    scales: Any = None
    zeros: Any = None


def _matrix(x: Any, name: str, shape: str) -> None:
    """x is a 2-D numpy array or torch CPU tensor; ``shape`` says which, for the messages."""
    check_array(x, name)
    if len(x.shape) != 2:
        raise ValueError(f"{name} must be 2-D {shape}, got shape {tuple(x.shape)}")
    if min(x.shape) == 0:
        raise ValueError(f"{name} is empty, shape {tuple(x.shape)}; expected {shape} with both sizes > 0")
    if is_torch(x) and x.device.type != "cpu":
        raise ValueError(f"{name} is on {x.device}; the GPTQ kernels run on the CPU. Call .cpu() first")


def _in_place(x: Any, name: str, shape: str) -> Any:
    """A matrix the kernel updates: float32, C-contiguous and writeable as it is."""
    _matrix(x, name, shape)
    if dtype_name(x) != "float32":
        raise TypeError(
            f"{name} must be float32 (it is updated in place), got {dtype_name(x)}; convert it first, "
            f"e.g. {name}.astype(np.float32) or {name}.float()"
        )
    if not (x.is_contiguous() if is_torch(x) else x.flags.c_contiguous):
        raise ValueError(
            f"{name} must be C-contiguous (it is updated in place); call .contiguous() (torch) or "
            "np.ascontiguousarray (numpy) first"
        )
    if not is_torch(x) and not x.flags.writeable:
        raise ValueError(f"{name} is read-only (it is updated in place); pass a writeable copy")
    return x.detach() if is_torch(x) else x


def _float32(x: Any, name: str, shape: str, ndim: int | None = 2) -> Any:
    """A read-only input as a C-contiguous float32 array of its framework."""
    if ndim == 2:
        _matrix(x, name, shape)
    else:
        check_array(x, name)
        if is_torch(x) and x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}; the GPTQ kernels run on the CPU. Call .cpu() first")
    if dtype_name(x) not in _INPUT_DTYPES:
        raise TypeError(
            f"{name} must be a float array (float32, float16, bfloat16 or float64), got {dtype_name(x)}"
        )
    if is_torch(x):
        return x.detach().float().contiguous()
    return np.ascontiguousarray(x, dtype=np.float32)


def _int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        want = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {want}, got {value}")
    return int(value)


def _factor(u: Any, k: int) -> Any:
    u = _float32(u, "u", "[K, K]")
    if tuple(u.shape) != (k, k):
        raise ValueError(
            f"u must be [{k}, {k}] (cholesky_inverse_upper of the Hessian) for a weight with K={k}, "
            f"got shape {tuple(u.shape)}"
        )
    return u


def hessian_accumulate(hessian: Any, x: Any, *, reference: bool = False) -> Any:
    """``hessian [K, K] += x^T x`` over the rows of ``x [..., K]``, in place; returns ``hessian``.

    ``hessian`` (float32, C-contiguous, writeable) must be symmetric on entry: zeros, or an
    earlier sum. This is the plain sum over rows; GPTQ's ``2/n X^T X`` differs by a factor
    that its damping (relative to the mean diagonal) and the inverse factor's use cancel.
    ``x`` is any float dtype (converted to float32). NaN in ``x`` gives NaN in ``hessian``,
    which :func:`cholesky_inverse_upper` then refuses.
    """
    h = _in_place(hessian, "hessian", "[K, K]")
    k = int(h.shape[0])
    if h.shape[1] != k:
        raise ValueError(f"hessian must be square [K, K], got shape {tuple(h.shape)}")
    check_array(x, "x")
    if len(x.shape) == 0 or x.shape[-1] != k:
        raise ValueError(f"x must be [..., K={k}] (K of the hessian), got shape {tuple(x.shape)}")
    rows = _float32(x, "x", f"[..., {k}]", ndim=None).reshape(-1, k)
    _C.hessian_accumulate(h, rows, reference=bool(reference))
    return hessian


def cholesky_inverse_upper(hessian: Any, *, inplace: bool = False, reference: bool = False) -> Any:
    """``U``, the upper-triangular Cholesky factor of ``hessian^-1`` (``hessian^-1 = U^T U``,
    positive diagonal, zeros below it) of a symmetric positive definite ``hessian [K, K]``.

    With ``inplace=True`` the factor overwrites ``hessian`` (float32, C-contiguous, writeable),
    which is returned: no second K x K matrix. Otherwise ``hessian`` (any float dtype) is left
    as it is and U is a new float32 array. ``ValueError`` if ``hessian`` is not positive
    definite (add damping to its diagonal) or holds NaN or Inf.
    """
    if inplace:
        h = _in_place(hessian, "hessian", "[K, K]")
    else:  # a float32 copy whatever the input (_float32 alone returns a float32 input itself)
        h = _float32(hessian, "hessian", "[K, K]")
        h = h.clone() if is_torch(h) else np.array(h, dtype=np.float32, order="C", copy=True)
    if h.shape[0] != h.shape[1]:
        raise ValueError(f"hessian must be square [K, K], got shape {tuple(h.shape)}")
    finite = bool(h.isfinite().all()) if is_torch(h) else bool(np.isfinite(h).all())
    if not finite:
        raise ValueError("hessian holds NaN or Inf; it has no inverse factor")
    _C.cholesky_inverse_upper(h, reference=bool(reference))
    return hessian if inplace else h


def _grid(bits: Any, group_size: Any) -> tuple[int, int]:
    return _int(bits, "bits", 2, 8), _int(group_size, "group_size", 0)


def gptq_grid_params(
    w: Any, *, bits: int, symmetric: bool = True, group_size: int = 0, mse: bool = False
) -> tuple[Any, Any]:
    """``(scales, zeros)`` of ``w [N, K]`` in contiguous groups of ``group_size`` columns (0:
    one group per row): the grid RTN would pick, float32 and uint8 ``[N, ceil(K / group)]``,
    in w's framework. GPTQ with static groups (act-order) takes them as its fixed grid.
    """
    bits, group_size = _grid(bits, group_size)
    w32 = _float32(w, "w", "[N, K]")
    n, k = (int(d) for d in w32.shape)
    groups = -(-k // (group_size or k))
    scales, zeros = empty(w32, (n, groups), "float32"), empty(w32, (n, groups), "uint8")
    _C.gptq_grid_params(w32, bits, bool(symmetric), group_size, scales, zeros, mse=bool(mse))
    return scales, zeros


def gptq_quantize(
    w: Any,
    u: Any,
    *,
    bits: int,
    symmetric: bool = True,
    group_size: int = 128,
    col_group: Any = None,
    scales: Any = None,
    zeros: Any = None,
    mse: bool = False,
    block: int = 128,
    reference: bool = False,
) -> GPTQResult:
    """GPTQ (Frantar et al., 2022) of ``w [N, K]`` in place, one column at a time, each
    column's rounding error spread over the columns after it through ``u`` (the
    :func:`cholesky_inverse_upper` of the Hessian in the same column order), with lazy batch
    updates of ``block`` columns. ``w`` (float32, C-contiguous, writeable) ends as its
    quantized values; returns :class:`GPTQResult` (codes, scales, zeros).

    Without ``col_group`` the groups are runs of ``group_size`` columns whose grid is computed
    from the error-updated weights when the group starts (``scales``/``zeros`` are outputs;
    do not pass them). With ``col_group`` (int [K], each column's group, e.g. after an
    act-order permutation) the grid is fixed beforehand: pass ``scales`` (float32) and
    ``zeros`` (uint8) ``[N, groups]``, e.g. from :func:`gptq_grid_params`; they are returned
    as given. ``group_size=0`` (one group per row) needs ``col_group``.
    """
    bits, group_size = _grid(bits, group_size)
    block = _int(block, "block", 1)
    w_ = _in_place(w, "w", "[N, K]")
    n, k = (int(d) for d in w_.shape)
    u_ = _factor(u, k)
    if col_group is None:
        if group_size == 0:
            raise ValueError("group_size 0 (one group per row) needs col_group and precomputed scales")
        if scales is not None or zeros is not None:
            raise ValueError(
                "scales and zeros are outputs without col_group (computed as each group starts); "
                "pass them only with col_group"
            )
        groups = -(-k // group_size)
        scales, zeros = empty(w_, (n, groups), "float32"), empty(w_, (n, groups), "uint8")
        groups_arg = None
    else:
        check_array(col_group, "col_group")
        if tuple(col_group.shape) != (k,):
            raise ValueError(
                f"col_group must be [K={k}] (one group per column), got shape {tuple(col_group.shape)}"
            )
        if not dtype_name(col_group).startswith(("int", "uint")):
            raise TypeError(f"col_group must be an integer array, got {dtype_name(col_group)}")
        g = col_group.detach().cpu().numpy() if is_torch(col_group) else np.asarray(col_group)
        if g.min() < 0 or g.max() > np.iinfo(np.int32).max:
            raise ValueError(f"col_group must be in [0, 2^31), got values in [{g.min()}, {g.max()}]")
        groups_arg = np.ascontiguousarray(g, dtype=np.int32)
        groups = int(groups_arg.max()) + 1
        if scales is None or zeros is None:
            raise ValueError(
                "col_group fixes the grid beforehand: pass its scales and zeros (from gptq_grid_params)"
            )
        for name, t, dtype in (("scales", scales, "float32"), ("zeros", zeros, "uint8")):
            check_array(t, name)
            if tuple(t.shape) != (n, groups) or dtype_name(t) != dtype:
                raise ValueError(
                    f"{name} must be {dtype} [N, groups] = [{n}, {groups}], "
                    f"got {dtype_name(t)} {tuple(t.shape)}"
                )
    codes = empty(w_, (n, k), "uint8")
    _C.gptq_quantize(
        w_, u_, bits, bool(symmetric), group_size, groups_arg, scales, zeros, codes,
        block=block, reference=bool(reference), mse=bool(mse),
    )  # fmt: skip
    return GPTQResult(codes, scales, zeros)


def sparsegpt_prune(
    w: Any,
    u: Any,
    *,
    sparsity: float = 0.5,
    n: int = 0,
    m: int = 0,
    bits: int = 0,
    symmetric: bool = True,
    group_size: int = 0,
    mse: bool = False,
    block: int = 128,
    reference: bool = False,
) -> SparseGPTResult:
    """SparseGPT (Frantar & Alistarh, 2023) of ``w [N, K]`` in place, on GPTQ's column loop:
    the weights with the smallest ``w^2 / U_jj^2`` are removed and the error of removing
    them is spread over the later columns through ``u`` (:func:`cholesky_inverse_upper` of
    the Hessian). ``w`` (float32, C-contiguous, writeable) ends as the pruned (and with
    ``bits`` quantized) values; returns :class:`SparseGPTResult`.

    What is pruned: with ``m > 0`` an n:m pattern (n of every m consecutive weights of a row
    kept; K a multiple of m), chosen from the updated weights at each set; with ``m=0`` the
    share ``sparsity`` (in [0, 1)) of each block of ``block`` columns over all its rows.
    ``bits`` 2-8 also quantizes the kept weights on GPTQ's grid (contiguous groups of
    ``group_size`` columns, 0: one per row).
    """
    block = _int(block, "block", 1)
    m = _int(m, "m", 0)
    n = _int(n, "n", 0)
    bits = _int(bits, "bits", 0, 8)
    if bits == 1:
        raise ValueError("bits must be 0 (prune only) or in [2, 8], got 1")
    group_size = _int(group_size, "group_size", 0)
    w_ = _in_place(w, "w", "[N, K]")
    rows, k = (int(d) for d in w_.shape)
    u_ = _factor(u, k)
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating)):
        raise TypeError(f"sparsity must be a number, got {type(sparsity).__name__}")
    if m:
        if not 0 < n < m:
            raise ValueError(f"an n:m pattern needs 0 < n < m, got {n}:{m}")
        if k % m:
            raise ValueError(f"K ({k}) must be a multiple of m ({m}) for the {n}:{m} pattern")
    else:
        if n:
            raise ValueError(f"n={n} needs m (an n:m pattern); for a share of each block pass sparsity")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    mask = empty(w_, (rows, k), "uint8")
    codes = scales = zeros = None
    if bits:
        groups = -(-k // (group_size or k))
        scales, zeros = empty(w_, (rows, groups), "float32"), empty(w_, (rows, groups), "uint8")
        codes = empty(w_, (rows, k), "uint8")
    _C.sparsegpt_prune(
        w_, u_, float(sparsity), n, m, bits, bool(symmetric), group_size, scales, zeros, codes, mask,
        block=block, reference=bool(reference), mse=bool(mse),
    )  # fmt: skip
    return SparseGPTResult(mask, codes, scales, zeros)
