"""``KDLoss`` and ``FusedLinearKDLoss``: the distillation kernels as torch autograd modules.

The kernels compute the gradient in the forward pass (the loss is the last operation of a
training step), so nothing the size of the logits is kept for backward but the gradient
itself; backward only scales it by the incoming gradient. A graph through these losses can
therefore be backpropagated once: the stored gradient is handed over, not copied.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..ops.kd import KDOptions, TeacherHidden, TeacherTopK, fused_linear_kd_loss, kd_loss

__all__ = ["FusedLinearKDLoss", "KDLoss", "TeacherHidden", "TeacherTopK"]


def _scaled(grad: torch.Tensor | None, grad_out: torch.Tensor, per_row: bool) -> torch.Tensor | None:
    """grad * grad_out in place (the stored gradient is used once); per_row for 'none'."""
    if grad is None:
        return None
    if per_row:
        return grad.mul_(grad_out.to(grad.dtype).unsqueeze(-1))
    if grad_out.item() != 1.0:  # the common case, loss.backward(), skips a pass over the logits
        grad.mul_(grad_out.to(grad.dtype))
    return grad


def _take(ctx: Any, name: str) -> Any:
    if not hasattr(ctx, name):
        raise RuntimeError(
            "slmops distillation losses compute their gradient in forward and hand it to the first "
            "backward; a second backward through the same loss (retain_graph) is not supported"
        )
    value = getattr(ctx, name)
    delattr(ctx, name)
    return value


class _KDLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: Any, labels: Any, num_tokens: Any, opts: KDOptions):
        want_grad = ctx.needs_input_grad[0]
        out = kd_loss(
            student, teacher, labels=labels, num_tokens=num_tokens, return_grad=want_grad, **opts.__dict__
        )
        loss, grad = out if want_grad else (out, None)
        ctx.grad = grad
        ctx.per_row = opts.reduction == "none"
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        return _scaled(_take(ctx, "grad"), grad_out, ctx.per_row), None, None, None, None


class _FusedLinearKDLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, teacher, labels, num_tokens, opts: KDOptions, chunk_rows: int):
        loss, d_hidden, d_weight = fused_linear_kd_loss(
            hidden, weight, teacher, labels=labels, num_tokens=num_tokens,
            grad_hidden=ctx.needs_input_grad[0], grad_weight=ctx.needs_input_grad[1],
            chunk_rows=chunk_rows, **opts.__dict__,
        )  # fmt: skip
        ctx.grads = (d_hidden, d_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        d_hidden, d_weight = _take(ctx, "grads")
        grads = (_scaled(d_hidden, grad_out, False), _scaled(d_weight, grad_out, False))
        return (*grads, None, None, None, None, None)


class KDLoss(nn.Module):
    """Distillation loss on logits: ``KDLoss(divergence="forward_kl", temperature=2.0)(student_logits,
    teacher_logits)``; the teacher may also be a :class:`TeacherTopK`. Options and their
    meaning: :mod:`slmops.ops.kd`. ``labels`` (the next-token ids, already shifted) mask
    ``ignore_index`` positions and feed the hard-label term; ``num_tokens`` is the count of
    counted positions over all micro-batches of an optimizer step (gradient accumulation)."""

    def __init__(
        self,
        divergence: str = "forward_kl",
        *,
        temperature: float = 1.0,
        beta: float = 0.5,
        reduction: str = "batchmean",
        ignore_index: int = -100,
        hard_weight: float = 0.0,
        scale_t2: bool = True,
    ) -> None:
        super().__init__()
        self.options = KDOptions(
            divergence, temperature, beta, reduction, ignore_index, hard_weight, scale_t2
        )

    def forward(
        self, student_logits: torch.Tensor, teacher: Any, labels: Any = None, num_tokens: Any = None
    ) -> torch.Tensor:
        if isinstance(teacher, torch.Tensor):
            teacher = teacher.detach()
        return _KDLossFunction.apply(student_logits, teacher, labels, num_tokens, self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.__dict__.items())


class FusedLinearKDLoss(KDLoss):
    """Distillation loss on ``student_hidden @ student_head_weight.T`` without materializing
    the logits: ``FusedLinearKDLoss(temperature=2.0)(hidden, model.lm_head.weight, teacher)``,
    the teacher as logits, :class:`TeacherTopK` or :class:`TeacherHidden`. Gradients flow to
    the hidden states and the head weight (each only if it requires grad). ``chunk_rows``: rows
    of logits per chunk (0: automatic)."""

    def __init__(self, divergence: str = "forward_kl", *, chunk_rows: int = 0, **options: Any) -> None:
        super().__init__(divergence, **options)
        if self.options.reduction == "none":
            raise ValueError(
                "FusedLinearKDLoss needs reduction 'batchmean' or 'sum' (d_weight sums over positions)"
            )
        self.chunk_rows = int(chunk_rows)

    def forward(  # type: ignore[override]
        self,
        student_hidden: torch.Tensor,
        student_head_weight: torch.Tensor,
        teacher: Any,
        labels: Any = None,
        num_tokens: Any = None,
    ) -> torch.Tensor:
        if isinstance(teacher, torch.Tensor):
            teacher = teacher.detach()
        return _FusedLinearKDLossFunction.apply(
            student_hidden, student_head_weight, teacher, labels, num_tokens, self.options, self.chunk_rows
        )
