"""The options distillation and fine-tuning share: the training loop's steps, batches,
learning-rate schedule, clipping, checkpoints and seed (:class:`TrainingOptionsBase`), each
written once with its constraint and description. ``slmops.distill.TrainingOptions`` and
``slmops.finetune.FinetuneOptions`` derive from it; where their defaults differ they say
only the default (:func:`base_field`).

This module imports nothing of the training loop (:mod:`slmops._training` imports it), so
an options model can be read without loading the algorithms.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from pydantic import Field
from pydantic.fields import FieldInfo

from ._options import Options, choice

SCHEDULES = ("cosine", "linear", "constant")

OptionsT = TypeVar("OptionsT", bound=Options)


def scheduled_lr(
    step: int, steps: int, lr: float, warmup_steps: int, min_lr_ratio: float, kind: str
) -> float:
    """Linear warm-up over warmup_steps, then ``kind`` decay to lr * min_lr_ratio at the
    last step (``constant``: none). ``step`` counts from 0."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    if kind == "constant":
        return lr
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * decay)


class TrainingOptionsBase(Options):
    """The training loop's options. ``steps``, ``lr``, ``warmup_steps`` and ``min_lr_ratio``
    have no default here: each algorithm states its own."""

    steps: int = Field(ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="sequences per optimizer step, over all processes")
    micro_batch_size: int = Field(
        0, ge=0, description="sequences per forward pass (0: the whole share of a process)"
    )
    seq_len: int = Field(256, ge=1, description="tokens per training sequence")
    lr: float = Field(gt=0, description="peak learning rate (AdamW)")
    schedule: choice(SCHEDULES) = Field(  # type: ignore[valid-type]
        "cosine", description="after warm-up: cosine or linear decay to lr * min_lr_ratio, or constant"
    )
    warmup_steps: int = Field(ge=0, description="steps of linear learning-rate warm-up")
    min_lr_ratio: float = Field(ge=0, le=1, description="the decay ends at lr * min_lr_ratio")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="clip the gradient norm to this (0: no clipping)")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: none)")
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints are kept")
    seed: int = Field(0, description="seed of the data order (and of what is initialized)")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (from 0): linear warm-up over
        warmup_steps, then the schedule's decay to lr * min_lr_ratio."""
        return scheduled_lr(step, self.steps, self.lr, self.warmup_steps, self.min_lr_ratio, self.schedule)


def base_field(name: str, default: Any) -> Any:
    """Field ``name`` of :class:`TrainingOptionsBase` (its constraint and description) with
    ``default``: what a subclass writes where its default differs."""
    return FieldInfo.merge_field_infos(TrainingOptionsBase.model_fields[name], default=default)


def options_from(model: type[OptionsT], value: OptionsT | dict[str, Any] | None, what: str) -> OptionsT:
    """``value`` as a ``model``: None gives the defaults, a dict its keys (an unknown key is
    an error naming the known ones), an instance itself."""
    if value is None:
        return model()
    if isinstance(value, model):
        return value
    if isinstance(value, dict):
        unknown = set(value) - set(model.model_fields)
        if unknown:
            raise ValueError(f"unknown {what} options {sorted(unknown)}; known: {sorted(model.model_fields)}")
        return model(**value)
    raise TypeError(f"{what} must be a {model.__name__} or a dict")
