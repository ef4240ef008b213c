"""Knowledge-distillation losses: the loss and its gradient in one pass of our C++ kernels.

Per token position, with ``q = softmax(student / T)`` and ``p = softmax(teacher / T)``:

- ``forward_kl``: KL(p || q), Hinton's distillation loss;
- ``reverse_kl``: KL(q || p), mode-seeking (MiniLLM);
- ``jsd``: generalized Jensen-Shannon, ``beta KL(p || m) + (1 - beta) KL(q || m)`` with
  ``m = beta p + (1 - beta) q``; ``beta=0`` is forward KL and ``beta=1`` reverse KL, as in
  TRL's GKD and Liger-Kernel.

The soft term is multiplied by ``T**2`` when ``scale_t2`` (the default, as Hinton et al.
and DistillKit do; TRL and Liger do not): the gradient of the tempered loss shrinks as
``1/T**2``, and the factor keeps its size independent of T. With ``hard_weight = a`` the
row loss is ``(1 - a) * soft + a * CE(student, label)``, the cross entropy on the
untempered student logits.

Teacher forms: full logits (any float dtype); :class:`TeacherTopK`, the k most likely ids
per position with their log-probabilities (the offline form DistillKit and vLLM store),
where the probability outside the k ids is one extra "tail" category on both sides; and,
for :func:`fused_linear_kd_loss` only, :class:`TeacherHidden`, the teacher's last hidden
states and head. Vocabularies of different sizes compare their first
``min(V_student, V_teacher)`` ids (Qwen-family heads differ only by padding rows); student
ids past that get no gradient. ``teacher=None`` with ``hard_weight=1.0`` is plain cross
entropy on the labels: :func:`fused_linear_kd_loss` then is a fused linear cross entropy,
what fine-tuning (:mod:`slmops.finetune`) trains with.

NaN in, NaN out: a position whose compared student or teacher logits hold NaN or +Inf, or
whose top-k log-probabilities hold NaN, gets a NaN loss and a NaN gradient over the compared
ids (every CPU kernel set; the CUDA kernels for logits and hidden states), so any reduction
over it is NaN. -Inf logits are valid: probability 0.

Reductions: ``"batchmean"`` divides the sum by the number of counted positions (not by the
batch dimension: every position is a row); ``num_tokens`` replaces that count, so that with
gradient accumulation the count of the whole optimizer step (all micro-batches and ranks)
gives the same gradient as one big batch. ``"sum"`` and ``"none"`` (one loss per position)
do not divide. Positions whose label is ``ignore_index`` count nothing.

These are the kernels: they return the loss and, with ``return_grad=True``, its gradient.
For autograd use :class:`slmops.nn.KDLoss` and :class:`slmops.nn.FusedLinearKDLoss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _C
from .._cuda import is_cuda, stream_of
from .._tensor import FLOAT_DTYPES, check_array, dtype_name, empty, is_torch, kernel_input

DIVERGENCES: tuple[str, ...] = tuple(_C.kd_divergences())  # named once, in cpp/bindings/kd.cpp
REDUCTIONS = ("batchmean", "sum", "none")


@dataclass(frozen=True)
class TeacherTopK:
    """The teacher as ``indices`` (int64 ``[..., k]``) and ``logprobs`` (``[..., k]``):
    log-probabilities at temperature 1 over the teacher's whole vocabulary."""

    indices: Any
    logprobs: Any


@dataclass(frozen=True)
class TeacherHidden:
    """The teacher as its final hidden states ``[..., H_t]`` and head weight ``[V_t, H_t]``:
    its logits are computed chunk by chunk beside the student's, never all at once."""

    hidden: Any
    head_weight: Any


@dataclass(frozen=True)
class KDOptions:
    divergence: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    reduction: str = "batchmean"
    ignore_index: int = -100
    hard_weight: float = 0.0
    scale_t2: bool = True

    def __post_init__(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if not 0.0 <= self.hard_weight <= 1.0:
            raise ValueError(f"hard_weight must be in [0, 1], got {self.hard_weight}")

    def kernel_args(self) -> dict:
        return {
            "divergence": self.divergence,
            "temperature": float(self.temperature),
            "beta": float(self.beta),
            "scale_t2": bool(self.scale_t2),
            "hard_weight": float(self.hard_weight),
            "ignore_index": int(self.ignore_index),
        }


def _rows(x: Any, name: str, lead: tuple[int, ...] | None, device: Any = None) -> Any:
    """x [..., C] as a contiguous [rows, C] array, checking its leading dims against lead
    and its device against the student's (None: the CPU)."""
    check_array(x, name)
    if len(x.shape) < 1 or (lead is not None and tuple(x.shape[:-1]) != lead):
        want = f"[{', '.join(map(str, lead))}, ...]" if lead is not None else "[..., columns]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if x.shape[-1] == 0:  # [..., 0] has no row count to reshape to (and nothing to compare)
        raise ValueError(f"{name} has no columns, shape {tuple(x.shape)}")
    where = x.device if is_torch(x) and x.device.type != "cpu" else None
    if where != device:
        raise ValueError(f"{name} is on {where or 'the CPU'}, the student's tensors on {device or 'the CPU'}")
    return kernel_input(x).reshape(-1, x.shape[-1])


def _device(x: Any) -> Any:
    """The CUDA device of x, or None on the CPU (where the distillation kernels run too)."""
    return x.device if is_cuda(x) else None


def _as(x: Any, dtype: str) -> Any:
    if is_torch(x):
        import torch

        return x.to(getattr(torch, dtype)).contiguous()
    return np.ascontiguousarray(x, dtype=dtype)


def _teacher_args(
    teacher: Any,
    lead: tuple[int, ...],
    opts: KDOptions,
    *,
    fused: bool,
    device: Any = None,
    dtype: str = "float32",
) -> dict:
    """The teacher's kernel arguments; hidden states and head in `dtype` (float32 on the CPU)."""
    if teacher is None:  # cross entropy on the labels alone (fine-tuning)
        if opts.hard_weight != 1.0:
            raise ValueError("teacher=None gives plain cross entropy: it needs hard_weight=1.0 and labels")
        return {}
    if isinstance(teacher, TeacherTopK):
        if device is not None:
            raise ValueError("TeacherTopK runs on the CPU; on CUDA pass teacher logits or TeacherHidden")
        ids = _rows(teacher.indices, "teacher.indices", lead)
        lp = _rows(teacher.logprobs, "teacher.logprobs", lead)
        if tuple(ids.shape) != tuple(lp.shape):
            raise ValueError(
                f"teacher.indices {tuple(ids.shape)} and teacher.logprobs {tuple(lp.shape)} differ"
            )
        return {"topk_ids": _as(ids, "int64"), "topk_logprobs": _as(lp, "float32")}
    if isinstance(teacher, TeacherHidden):
        if not fused:
            raise TypeError(
                "kd_loss takes teacher logits or TeacherTopK; TeacherHidden needs fused_linear_kd_loss"
            )
        hidden = _as(_rows(teacher.hidden, "teacher.hidden", lead, device), dtype)
        head = _as(_rows(teacher.head_weight, "teacher.head_weight", None, device), dtype)
        if len(teacher.head_weight.shape) != 2 or head.shape[1] != hidden.shape[1]:
            raise ValueError(
                f"teacher.head_weight must be [vocab, {hidden.shape[1]}], "
                f"got {tuple(teacher.head_weight.shape)}"
            )
        return {"teacher_hidden": hidden, "teacher_head": head}
    logits = _rows(teacher, "teacher_logits", lead, device)
    if dtype_name(logits) not in FLOAT_DTYPES:
        raise TypeError(f"teacher_logits must be float32, float16 or bfloat16, got {dtype_name(logits)}")
    if device is not None:  # the GPU kernel reads both sides in one dtype
        logits = _as(logits, dtype)
    return {"teacher_logits": logits}


def _labels(labels: Any, lead: tuple[int, ...], opts: KDOptions, device: Any = None, vocab: int = 0) -> Any:
    if labels is None:
        if opts.hard_weight > 0:
            raise ValueError("hard_weight > 0 needs labels (the hard targets, already shifted)")
        return None
    check_array(labels, "labels")
    if tuple(labels.shape) != lead:
        raise ValueError(f"labels must have shape {lead} (one per position), got {tuple(labels.shape)}")
    out = _as(_rows(labels.reshape(-1, 1), "labels", None, device).reshape(-1), "int64")
    if device is not None and opts.hard_weight > 0:
        # The CPU kernels name a bad label; the GPU's cannot raise, so check here.
        bad = (out != opts.ignore_index) & ((out < 0) | (out >= vocab))
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"label {int(out[row])} of row {row} is outside the vocabulary [0, {vocab}) "
                f"and is not ignore_index {opts.ignore_index}"
            )
    return out


def _normalizer(labels: Any, rows: int, opts: KDOptions, num_tokens: Any) -> float:
    """What the summed loss is divided by: 1, num_tokens, or the count of counted rows."""
    if opts.reduction != "batchmean":
        if num_tokens is not None:
            raise ValueError("num_tokens applies to reduction='batchmean' only")
        return 1.0
    if num_tokens is not None:
        n = float(num_tokens)
        if not n > 0:
            raise ValueError(f"num_tokens must be > 0, got {num_tokens}")
        return n
    counted = rows if labels is None else int((labels != opts.ignore_index).sum())
    return float(max(counted, 1))


def _reduce(loss_rows: Any, lead: tuple[int, ...], opts: KDOptions, denom: float) -> Any:
    if opts.reduction == "none":
        return loss_rows.reshape(lead)
    total = loss_rows.double().sum() if is_torch(loss_rows) else loss_rows.sum(dtype=np.float64)
    out = total / denom
    return out.float() if is_torch(out) else np.float32(out)


def kd_loss(
    student_logits: Any,
    teacher: Any,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    reduction: str = "batchmean",
    ignore_index: int = -100,
    labels: Any = None,
    hard_weight: float = 0.0,
    scale_t2: bool = True,
    num_tokens: Any = None,
    return_grad: bool = False,
    isa: str = "auto",
) -> Any:
    """The distillation loss of ``student_logits [..., V]`` against ``teacher`` (logits
    ``[..., V_t]`` or :class:`TeacherTopK`); see the module docstring for the options.

    Returns the loss (a scalar, or ``[...]`` for ``reduction="none"``), in float32 whatever
    the input dtype, or ``(loss, grad)`` with ``return_grad=True``: ``grad`` is d(loss) /
    d(student_logits) (for ``"none"``: of each position's own loss) in the student's dtype.
    """
    opts = KDOptions(divergence, temperature, beta, reduction, ignore_index, hard_weight, scale_t2)
    check_array(student_logits, "student_logits")
    if dtype_name(student_logits) not in FLOAT_DTYPES:
        raise TypeError(
            f"student_logits must be float32, float16 or bfloat16, got {dtype_name(student_logits)}"
        )
    lead = tuple(student_logits.shape[:-1])
    device = _device(student_logits)
    z = _rows(student_logits, "student_logits", lead, device)
    teacher_args = _teacher_args(teacher, lead, opts, fused=False, device=device, dtype=dtype_name(z))
    t_logits = teacher_args.get("teacher_logits")
    compared = z.shape[1] if t_logits is None else min(z.shape[1], t_logits.shape[1])
    targets = _labels(labels, lead, opts, device, compared)
    denom = _normalizer(targets, z.shape[0], opts, num_tokens)
    loss_rows = empty(z, (z.shape[0],), "float32")
    grad = empty(z, tuple(z.shape), dtype_name(z)) if return_grad else None
    _C.kd_loss(
        z, loss_rows, grad, labels=targets, grad_scale=1.0 / denom, isa=isa,
        cuda_stream=stream_of(z) if device is not None else None, **teacher_args, **opts.kernel_args(),
    )  # fmt: skip
    loss = _reduce(loss_rows, lead, opts, denom)
    return (loss, grad.reshape(student_logits.shape)) if grad is not None else loss  # grad iff return_grad


def fused_linear_kd_loss(
    student_hidden: Any,
    student_head_weight: Any,
    teacher: Any,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    reduction: str = "batchmean",
    ignore_index: int = -100,
    labels: Any = None,
    hard_weight: float = 0.0,
    scale_t2: bool = True,
    num_tokens: Any = None,
    grad_hidden: bool = False,
    grad_weight: bool = False,
    chunk_rows: int = 0,
    isa: str = "auto",
) -> Any:
    """The distillation loss of the logits ``student_hidden [..., H] @ student_head_weight
    [V, H].T`` against ``teacher`` (logits, :class:`TeacherTopK` or :class:`TeacherHidden`),
    without ever holding more than ``chunk_rows`` rows of logits (0: as many rows as fit in
    64 MB of float32 logits, a power of two). Each chunk's logits become their
    gradient in place and go through the two products for d(hidden) and d(weight).

    Returns ``(loss, d_hidden, d_weight)``; a gradient not asked for (``grad_hidden``,
    ``grad_weight``) is None and costs nothing. On the CPU arithmetic is float32 (fp16/bf16
    inputs are converted); on CUDA tensors the chunk GEMMs run in the inputs' dtype on
    cuBLASLt with float32 accumulation. The gradients come back in the inputs' dtypes.
    ``reduction="none"`` gives per-position losses without gradients: d(weight) sums over
    positions.
    """
    opts = KDOptions(divergence, temperature, beta, reduction, ignore_index, hard_weight, scale_t2)
    for name, x in (("student_hidden", student_hidden), ("student_head_weight", student_head_weight)):
        check_array(x, name)
        if dtype_name(x) not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {dtype_name(x)}")
    if reduction == "none" and (grad_hidden or grad_weight):
        raise ValueError(
            "reduction='none' gives no gradients (d_weight sums over positions); use 'sum' or 'batchmean'"
        )
    lead = tuple(student_hidden.shape[:-1])
    device = _device(student_hidden)
    # The CPU kernels compute in float32; the GPU's GEMMs run in the hidden states' dtype.
    dtype = "float32" if device is None else dtype_name(student_hidden)
    x = _as(_rows(student_hidden, "student_hidden", lead, device), dtype)
    w = _rows(student_head_weight, "student_head_weight", None, device)
    if len(student_head_weight.shape) != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(
            f"student_head_weight must be [vocab, {x.shape[1]}], got {tuple(student_head_weight.shape)}"
        )
    w = _as(w, dtype)
    teacher_args = _teacher_args(teacher, lead, opts, fused=True, device=device, dtype=dtype)
    if "teacher_logits" in teacher_args:
        compared = min(w.shape[0], teacher_args["teacher_logits"].shape[1])
    elif "teacher_head" in teacher_args:
        compared = min(w.shape[0], teacher_args["teacher_head"].shape[0])
    else:
        compared = w.shape[0]
    targets = _labels(labels, lead, opts, device, compared)
    denom = _normalizer(targets, x.shape[0], opts, num_tokens)
    loss_rows = empty(x, (x.shape[0],), "float32")
    d_hidden = empty(x, tuple(x.shape), "float32") if grad_hidden else None
    d_weight = None
    if grad_weight:
        d_weight = empty(w, tuple(w.shape), "float32")
        d_weight[...] = 0
    _C.fused_linear_kd_loss(
        x, w, loss_rows, d_hidden, d_weight, labels=targets, grad_scale=1.0 / denom,
        chunk_rows=int(chunk_rows), isa=isa, cuda_stream=stream_of(x) if device is not None else None,
        **teacher_args, **opts.kernel_args(),
    )  # fmt: skip
    loss = _reduce(loss_rows, lead, opts, denom)
    if d_hidden is not None:
        d_hidden = _as(d_hidden.reshape(student_hidden.shape), dtype_name(student_hidden))
    if d_weight is not None:
        d_weight = _as(d_weight, dtype_name(student_head_weight))
    return loss, d_hidden, d_weight
