"""``type: finetune``: LoRA or QLoRA training of the model coming in on a dataset of the run
config (``data``; the reference corpus's training split when absent) with
``slmops.finetune_model``. The adapter (peft format) is an artifact; the model that goes on is
the base with the adapter merged in (a float model: a later quantize pass re-quantizes it).
The options are those of ``slmops.finetune.options`` side by side; QLoRA's base takes its
options under the names below (``quant_format`` for ``format``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic.fields import FieldInfo

from ..._options import pick, side_by_side
from ...finetune import finetune, merge_lora
from ...finetune.options import FinetuneOptions, LoRAOptions, MethodOptions, QLoRAOptions
from ..registry import Pass, PassContext, PassOptions, PassOutput, register_pass

# QLoRAOptions' fields as the pass names them
QLORA_KEYS = {
    "format": "quant_format", "group_size": "quant_group_size", "double_quant": "double_quant",
    "frozen_dtype": "frozen_dtype",
}  # fmt: skip
_QLORA_FIELDS = {
    key: (field.annotation, FieldInfo.merge_field_infos(field))
    for name, key in QLORA_KEYS.items()
    for field in [QLoRAOptions.model_fields[name]]
}


class FinetunePassOptions(
    side_by_side(
        "FinetunePassOptionsFields",
        [MethodOptions, FinetuneOptions, LoRAOptions],
        PassOptions,
        data=(
            str | None,
            Field(None, description="a dataset of the run config (default: the reference corpus)"),
        ),
        **_QLORA_FIELDS,
    )
):
    def training(self) -> FinetuneOptions:
        return pick(FinetuneOptions, self.model_dump())

    def lora(self) -> LoRAOptions:
        return pick(LoRAOptions, self.model_dump())

    def qlora(self) -> QLoRAOptions | None:
        """The QLoRA base's options (None unless method is qlora)."""
        if self.method != "qlora":
            return None
        return QLoRAOptions(**{name: getattr(self, key) for name, key in QLORA_KEYS.items()})


@register_pass
class FinetunePass(Pass):
    type = "finetune"
    Options = FinetunePassOptions

    def normalize(self, options: FinetunePassOptions) -> dict[str, Any]:
        out = options.model_dump()
        if options.method != "qlora":  # the base's quantization means nothing to LoRA
            for key in QLORA_KEYS.values():
                out.pop(key)
        return out

    def run(self, model: Any, tokenizer: Any, options: FinetunePassOptions, ctx: PassContext) -> PassOutput:
        from ...zoo.corpus import kjv_split

        o = options
        data = ctx.data(o.data) if o.data else kjv_split("train")
        result = finetune(
            model, tokenizer, data, out_dir=ctx.artifacts_dir / "finetune", method=o.method, lora=o.lora(),
            training=o.training(), qlora=o.qlora(), progress=False,
        )  # fmt: skip
        s = result.summary
        ctx.log.info(
            "fine-tuned (%s) %d steps: eval loss %s -> %s", o.method, s["steps"], s["eval_loss_before"],
            s["eval_loss_after"],
        )  # fmt: skip
        keys = ("trainable_params", "frozen_base_ratio", "eval_loss_before", "eval_loss_after",
                "perplexity_before", "perplexity_after", "tokens_trained", "seconds")  # fmt: skip
        info = {"method": o.method, **{k: s[k] for k in keys}}
        return PassOutput(
            merge_lora(result.model).eval(),
            result.tokenizer,
            info=info,
            artifacts={"adapter": "finetune/adapter", "train_log": "finetune/train_log.jsonl"},
        )
