"""``type: distill``: the model coming in is the teacher; a student (``student``: a zoo name
or Hugging Face folder with the same tokenizer) is trained on a dataset of the run config
(``data``; the reference corpus's training split when absent) with ``slmops.distill``, and
the trained student goes on to the next pass."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from pydantic import field_validator

from ...distill import TrainingOptions, distill
from ...ops.kd import DIVERGENCES
from ..registry import Pass, PassContext, PassOptions, PassOutput, one_of, register_pass

_DEFAULTS = TrainingOptions()


class DistillOptions(PassOptions):
    student: str
    data: str | None = None  # a dataset name of the run config
    steps: int = _DEFAULTS.steps
    batch_size: int = _DEFAULTS.batch_size
    micro_batch_size: int = _DEFAULTS.micro_batch_size
    seq_len: int = _DEFAULTS.seq_len
    lr: float = _DEFAULTS.lr
    warmup_steps: int = _DEFAULTS.warmup_steps
    divergence: str = _DEFAULTS.divergence
    temperature: float = _DEFAULTS.temperature
    beta: float = _DEFAULTS.beta
    hard_weight: float = _DEFAULTS.hard_weight
    init: str = _DEFAULTS.init
    seed: int = _DEFAULTS.seed

    @field_validator("divergence")
    @classmethod
    def _divergence(cls, v: str) -> str:
        return one_of("divergence", v, DIVERGENCES)

    @field_validator("init")
    @classmethod
    def _init(cls, v: str) -> str:
        return one_of("init", v, ("pretrained", "scratch"))


@register_pass
class DistillPass(Pass):
    type = "distill"
    Options = DistillOptions

    def run(self, model: Any, tokenizer: Any, options: DistillOptions, ctx: PassContext) -> PassOutput:
        from ... import zoo
        from ...zoo.corpus import kjv_split

        opts = options.model_dump()
        training = {f.name: opts[f.name] for f in fields(TrainingOptions) if f.name in opts}
        data = ctx.data(options.data) if options.data else kjv_split("train")
        result = distill(
            (model, tokenizer), zoo.load(options.student), ctx.artifacts_dir / "distill",
            data=data, training=training, progress=False,
        )  # fmt: skip
        t = result.summary["training"]
        ctx.log.info(
            "distilled %s for %d steps: final loss %.4f", options.student, t["steps"], t["final_loss"]
        )
        info = {
            "student": options.student,
            "steps": t["steps"],
            "tokens_trained": t["tokens_trained"],
            "final_loss": round(t["final_loss"], 4),
            "seconds": t["seconds"],
        }
        return PassOutput(
            result.model.eval(),
            result.tokenizer,
            info=info,
            artifacts={"train_log": "distill/train_log.jsonl"},
        )
