"""The options of distillation, written once: :func:`slmops.distill_model` and its stages check
their arguments with them; the workflow's ``distill`` pass and the ``slmops distill`` flags
are derived from them.

``GenerationOptions``: stage 1, the teacher answering prompts. ``TrainingOptions``: stage 2,
the training loop shared with fine-tuning (:class:`~slmops.training_options.TrainingOptionsBase`)
and the KD loss.
"""

from __future__ import annotations

from pydantic import Field

from .._options import Options, choice
from ..training_options import TrainingOptionsBase, base_field

STUDENT_INITS = ("pretrained", "scratch")


def _divergences() -> tuple[str, ...]:
    from ..ops.kd import DIVERGENCES

    return DIVERGENCES


class GenerationOptions(Options):
    """How the teacher generates (stage 1)."""

    max_new_tokens: int = Field(64, ge=1, description="tokens the teacher generates per prompt at most")
    temperature: float = Field(0.8, ge=0, description="sampling temperature (0: greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="sample from the most likely tokens of this mass")
    top_k: int = Field(50, ge=0, description="sample from the k most likely tokens (0: all)")
    batch_size: int = Field(8, ge=1, description="prompts per generation batch")
    logprobs_k: int = Field(
        0, ge=0, description="store the teacher's top-k log-probabilities per token (0: none)"
    )
    seed: int = Field(0, description="sampling seed")


class TrainingOptions(TrainingOptionsBase):
    """The student's training (stage 2): the loop's options and the KD loss's."""

    steps: int = base_field("steps", 200)
    lr: float = base_field("lr", 1e-3)
    warmup_steps: int = base_field("warmup_steps", 10)
    min_lr_ratio: float = base_field("min_lr_ratio", 0.1)
    divergence: choice(_divergences) = Field(  # type: ignore[valid-type]
        "forward_kl", description="divergence of the student's distribution from the teacher's"
    )
    temperature: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="softmax temperature of teacher and student"
    )
    beta: float = Field(0.5, ge=0, le=1, description="JSD mixture weight")
    hard_weight: float = Field(
        0.0, ge=0, le=1, description="weight of the next-token cross entropy (1: the text-only baseline)"
    )
    scale_t2: bool = Field(True, description="multiply the soft loss by T^2")
    init: choice(STUDENT_INITS) = Field(  # type: ignore[valid-type]
        "pretrained", description="the student's weights; scratch: its architecture, freshly initialized"
    )
    keep_sparsity: bool = Field(
        True,
        description="a pruned student's linears keep their zero weights (those a tenth or more "
        "exact zeros: pruned; a trained dense weight has next to none)",
    )
