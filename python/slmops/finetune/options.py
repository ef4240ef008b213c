"""The options of fine-tuning, written once: :func:`slmops.finetune_model` checks its arguments
with them; the workflow's ``finetune`` pass and the ``slmops finetune`` flags are derived
from them.

``MethodOptions``: LoRA or QLoRA. ``LoRAOptions``: the adapter. ``QLoRAOptions``: the frozen
4-bit base of QLoRA. ``FinetuneOptions``: the training loop shared with distillation
(:class:`~slmops.training_options.TrainingOptionsBase`) and the data and evaluation.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

from .._options import Options, choice, one_of
from ..training_options import TrainingOptionsBase, base_field

METHODS = ("lora", "qlora")
ALL_LINEAR = "all-linear"
QLORA_FORMATS = ("nf4", "int4")
FROZEN_DTYPES = ("bfloat16", "float16", "float32")


def _lora_inits() -> tuple[Any, ...]:
    from ..nn.lora import INITS

    return INITS


class MethodOptions(Options):
    """Which fine-tuning."""

    method: choice(METHODS) = Field(  # type: ignore[valid-type]
        "lora", description="lora, or qlora: the frozen base quantized to 4 bits first"
    )


def _alpha(value: float) -> float:
    if not value > 0:
        raise ValueError(f"alpha must be > 0, got {value}")
    return value


def _init(value: Any) -> Any:
    return one_of("init", value, _lora_inits())


def _targets(value: str | list[str]) -> str | list[str]:
    if isinstance(value, list):
        if not value or not all(value):
            raise ValueError("target_modules must be a non-empty list of module names")
    elif not value:
        raise ValueError(f"target_modules must be 'all-linear', a list of names or a regex, got {value!r}")
    return value


class LoRAOptions(Options):
    """An adapter's shape: rank ``r``, ``alpha`` (scaling alpha / r, or alpha / sqrt(r) with
    ``use_rslora``), ``dropout`` on the adapter's input, ``init`` (True: A Kaiming uniform
    and B zero, as peft; ``"gaussian"``; False: both random, for tests) and the layers."""

    r: int = Field(8, ge=1, description="adapter rank")
    alpha: Annotated[float, AfterValidator(_alpha)] = Field(
        16.0, description="adapter scale: alpha / r (alpha / sqrt(r) with use_rslora)"
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    use_rslora: bool = Field(False, description="scale by alpha / sqrt(r)")
    init: Annotated[bool | str, AfterValidator(_init)] = Field(
        True, description="adapter weights: true (B zero, as peft), gaussian, or false (both random)"
    )
    target_modules: Annotated[str | list[str], AfterValidator(_targets)] = Field(
        ALL_LINEAR, description="'all-linear', a list of module names, or one regex of module paths"
    )


class QLoRAOptions(Options):
    """The frozen base of QLoRA: its linear layers in 4 bits, its embedding in 16."""

    format: choice(QLORA_FORMATS) = Field("nf4", description="QLoRA base format")  # type: ignore[valid-type]
    group_size: int | None = Field(
        None, description="weights per scale (default: the format's, 64 for nf4 as QLoRA, 32 for int4)"
    )
    double_quant: bool = Field(False, description="QLoRA: quantize the nf4 block scales")
    frozen_dtype: choice(FROZEN_DTYPES) = Field(  # type: ignore[valid-type]
        "bfloat16", description="storage of the embedding (and a tied head); float32 leaves them as they are"
    )


class FinetuneOptions(TrainingOptionsBase):
    """The training of the adapter: the loop's options, what is learned, the evaluation."""

    steps: int = base_field("steps", 100)
    lr: float = base_field("lr", 2e-4)
    warmup_steps: int = base_field("warmup_steps", 5)
    min_lr_ratio: float = base_field("min_lr_ratio", 0.0)
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass")
    completion_only: bool = Field(False, description="learn completions / the last assistant turn only")
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of the data held out for evaluation when no eval data is given"
    )
    eval_every: int = Field(0, ge=0, description="evaluate every N steps (0: before and after training only)")
