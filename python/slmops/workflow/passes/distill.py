"""``type: distill``: the model coming in is the teacher; a student (``student``: a zoo name
or Hugging Face folder with the same tokenizer) is trained on a dataset of the run config
(``data``; the reference corpus's training split when absent) with ``slmops.distill_model``, and
the trained student goes on to the next pass. The training options are those of
``slmops.distill.TrainingOptions``."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..._options import pick, side_by_side
from ...distill import distill
from ...distill.options import TrainingOptions
from ..registry import Pass, PassContext, PassOptions, PassOutput, register_pass


class DistillOptions(
    side_by_side(
        "DistillOptionsFields",
        [TrainingOptions],
        PassOptions,
        student=(str, Field(description="the student: a zoo name or Hugging Face folder")),
        data=(
            str | None,
            Field(None, description="a dataset of the run config (default: the reference corpus)"),
        ),
    )
):
    def training(self) -> TrainingOptions:
        return pick(TrainingOptions, self.model_dump())


@register_pass
class DistillPass(Pass):
    type = "distill"
    Options = DistillOptions

    def run(self, model: Any, tokenizer: Any, options: DistillOptions, ctx: PassContext) -> PassOutput:
        from ... import zoo
        from ...zoo.corpus import kjv_split

        data = ctx.data(options.data) if options.data else kjv_split("train")
        result = distill(
            (model, tokenizer), zoo.load(options.student), ctx.artifacts_dir / "distill",
            data=data, training=options.training(), progress=False,
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
