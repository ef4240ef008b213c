"""``type: finetune``: LoRA or QLoRA training of the model coming in on a dataset of the run
config (``data``; the reference corpus's training split when absent) with
``slmops.finetune``. The adapter (peft format) is an artifact; the model that goes on is
the base with the adapter merged in (a float model: a later quantize pass re-quantizes it)."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from ...finetune import METHODS, FinetuneOptions, LoRAOptions, QLoRAOptions, finetune, merge_lora
from ...finetune.qlora import QLORA_FORMATS
from ..registry import Pass, PassContext, PassOptions, PassOutput, one_of, register_pass

_TRAIN, _LORA, _QLORA = FinetuneOptions(), LoRAOptions(), QLoRAOptions()


class FinetunePassOptions(PassOptions):
    method: str = "lora"
    data: str | None = None  # a dataset name of the run config
    r: int = _LORA.r
    alpha: float = _LORA.alpha
    dropout: float = _LORA.dropout
    target_modules: str | list[str] = _LORA.target_modules
    quant_format: str = _QLORA.format  # QLoRA's base
    steps: int = _TRAIN.steps
    batch_size: int = _TRAIN.batch_size
    seq_len: int = _TRAIN.seq_len
    lr: float = _TRAIN.lr
    warmup_steps: int = _TRAIN.warmup_steps
    seed: int = _TRAIN.seed

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return one_of("method", v, METHODS)

    @field_validator("quant_format")
    @classmethod
    def _format(cls, v: str) -> str:
        return one_of("quant_format", v, QLORA_FORMATS)


@register_pass
class FinetunePass(Pass):
    type = "finetune"
    Options = FinetunePassOptions

    def normalize(self, options: FinetunePassOptions) -> dict[str, Any]:
        out = options.model_dump()
        if options.method != "qlora":
            out.pop("quant_format")
        return out

    def run(self, model: Any, tokenizer: Any, options: FinetunePassOptions, ctx: PassContext) -> PassOutput:
        from ...zoo.corpus import kjv_split

        o = options
        data = ctx.data(o.data) if o.data else kjv_split("train")
        result = finetune(
            model, tokenizer, data, out_dir=ctx.artifacts_dir / "finetune", method=o.method,
            lora={"r": o.r, "alpha": o.alpha, "dropout": o.dropout, "target_modules": o.target_modules},
            training={"steps": o.steps, "batch_size": o.batch_size, "seq_len": o.seq_len, "lr": o.lr,
                      "warmup_steps": o.warmup_steps, "seed": o.seed},
            qlora={"format": o.quant_format} if o.method == "qlora" else None, progress=False,
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
