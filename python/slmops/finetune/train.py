"""``finetune``: LoRA or QLoRA training of a causal language model on our kernels.

The loss is the fused linear cross entropy (``FusedLinearKDLoss`` without a teacher): the
logits are never materialized for the batch. Steps, accumulation, DDP under ``torchrun``
(gloo on the CPU), checkpoints and the step log are the distillation loop's
(:mod:`slmops._training`); checkpoints hold only the adapter and the optimizer.

Outputs in ``out_dir``: ``adapter/`` (peft format), ``train_log.jsonl`` (one line per
step, with ``eval_loss`` every ``eval_every`` steps), ``finetune_summary.json``,
``checkpoints/step-NNNNNN/``.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._training import (
    Process,
    StepLog,
    counted_tokens,
    last_hidden,
    output_head,
    pad_batch,
    resume_checkpoint,
    run_steps,
    save_checkpoint,
)
from ..distill.data import Example
from ..training_options import options_from
from .adapter import save_adapter
from .data import load_finetune_examples, split_examples
from .lora import add_lora, count_parameters
from .options import METHODS, FinetuneOptions, LoRAOptions, QLoRAOptions
from .qlora import quantize_base

# options a resumed run may change; any other difference from the checkpoint is an error
RESUMABLE_CHANGES = ("steps", "save_every", "keep_checkpoints", "eval_every")


@dataclass
class FinetuneResult:
    model: Any  # the base with the trained adapter active
    tokenizer: Any
    adapter_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


def evaluation_loss(model: Any, examples: list[Example], pad_id: int, micro_batch_size: int = 8) -> float:
    """Mean next-token cross entropy over the counted tokens of ``examples`` (nats)."""
    import torch

    from ..nn import FusedLinearKDLoss

    loss_fn = FusedLinearKDLoss(hard_weight=1.0)
    total = float(max(counted_tokens(examples), 1))
    was_training = model.training
    model.eval()
    loss = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), micro_batch_size):
            batch = pad_batch(examples[i : i + micro_batch_size], pad_id)
            hidden = last_hidden(model, batch["input_ids"], batch["attention_mask"])
            head = output_head(model, "fine-tuning")
            loss += float(loss_fn(hidden, head, None, batch["labels"], total))
    model.train(was_training)
    return loss


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def finetune(
    model: Any,
    tokenizer: Any = None,
    data: Any = None,
    *,
    out_dir: str | os.PathLike[str],
    method: str = "lora",
    lora: LoRAOptions | dict | None = None,
    training: FinetuneOptions | dict | None = None,
    qlora: QLoRAOptions | dict | None = None,
    eval_data: Any = None,
    text_template: str | None = None,
    text_field: str = "text",
    adapter_name: str = "default",
    resume: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tunes ``model`` (a zoo name or Hugging Face folder, then ``tokenizer`` is None;
    or a model, changed in place) with LoRA adapters on ``data`` (see
    :func:`load_finetune_examples`) and writes the adapter to ``out_dir/adapter``.

    ``method="qlora"`` first quantizes the base (``qlora``: nf4 or int4, our kernels; the
    embedding in bfloat16). The evaluation set is ``eval_data`` or a held-out
    ``training.eval_fraction`` of ``data``; its loss and perplexity are measured before and
    after training. Returns the model with the adapter active, and a summary (also in
    ``out_dir/finetune_summary.json``).
    """
    import torch
    from safetensors.torch import load_file, save_file

    from .._io import check_writable, write_json_atomic
    from ..models import model_and_tokenizer
    from ..nn import FusedLinearKDLoss

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    lora_opts = options_from(LoRAOptions, lora, "lora")
    opts = options_from(FinetuneOptions, training, "training")
    q_opts = options_from(QLoRAOptions, qlora, "qlora")
    if qlora is not None and method != "qlora":
        raise ValueError("qlora options apply to method='qlora'")
    if data is None:
        raise ValueError("finetune needs data (a .jsonl or text file, or text)")
    if isinstance(model, (str, os.PathLike)):
        if tokenizer is not None:
            raise ValueError("pass a tokenizer only with a model object; a name or folder brings its own")
        model, tokenizer = model_and_tokenizer(model, "model")
    elif tokenizer is None:
        raise ValueError("a model object needs its tokenizer")
    out = Path(out_dir)
    check_writable(out / "adapter")  # before training: the adapter must not replace a user's folder
    proc = Process()
    if proc.world > opts.batch_size:
        raise ValueError(f"batch_size {opts.batch_size} is smaller than the {proc.world} processes")
    output_head(model, "fine-tuning")

    read = dict(text_template=text_template, text_field=text_field, completion_only=opts.completion_only)
    examples = load_finetune_examples(data, tokenizer, opts.seq_len, **read)
    if eval_data is not None:
        train_ex, eval_ex = examples, load_finetune_examples(eval_data, tokenizer, opts.seq_len, **read)
    else:
        train_ex, eval_ex = split_examples(examples, opts.eval_fraction, opts.seed)

    before = count_parameters(model)  # the float base, before quantization and adapters
    quant_info = quantize_base(model, q_opts) if method == "qlora" else None
    torch.manual_seed(opts.seed)
    adapted = add_lora(model, lora_opts, adapter_name)
    counts = count_parameters(model)
    if opts.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    micro_eval = opts.micro_batch_size or opts.batch_size
    eval_before = evaluation_loss(model, eval_ex, pad_id, micro_eval) if eval_ex else None

    loss_fn = FusedLinearKDLoss(hard_weight=1.0)

    class CausalLMLoss(torch.nn.Module):  # the module DDP wraps: the model and its loss
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, labels, num_tokens):
            hidden = last_hidden(self.model, input_ids, attention_mask)
            return loss_fn(hidden, output_head(self.model, "fine-tuning"), None, labels, num_tokens)

    model.train()
    step_module = CausalLMLoss()
    if proc.world > 1:
        step_module = torch.nn.parallel.DistributedDataParallel(step_module)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=opts.lr, weight_decay=opts.weight_decay)

    def recorded(training: FinetuneOptions, lora: LoRAOptions, qlora: QLoRAOptions) -> dict[str, Any]:
        return {
            **training.as_dict(), "method": method, "lora": lora.as_dict(),
            "qlora": qlora.as_dict() if method == "qlora" else None,
        }  # fmt: skip

    run_options = recorded(opts, lora_opts, q_opts)
    start = 0
    if resume:
        defaults = recorded(FinetuneOptions(), LoRAOptions(), QLoRAOptions())
        start, ckpt = resume_checkpoint(out, optimizer, run_options, RESUMABLE_CHANGES, defaults)
        if ckpt is not None:
            saved = load_file(str(ckpt / "adapter.safetensors"))
            if set(saved) != set(trainable):
                raise ValueError(f"{ckpt} holds other adapter weights than this run trains")
            with torch.no_grad():
                for n, p in trainable.items():
                    p.copy_(saved[n])
    log = StepLog(out / "train_log.jsonl", proc.rank, start)

    def inputs(part: list[Example]) -> tuple:
        batch = pad_batch(part, pad_id)
        return batch["input_ids"], batch["attention_mask"], batch["labels"]

    def save(step: int) -> None:
        def write(tmp: Path) -> None:
            save_file(
                {n: p.detach().contiguous() for n, p in trainable.items()}, str(tmp / "adapter.safetensors")
            )

        save_checkpoint(out, step, write, optimizer, run_options, opts.keep_checkpoints)

    def extra(step: int) -> dict:
        if eval_ex and opts.eval_every and step % opts.eval_every == 0:
            return {"eval_loss": round(evaluation_loss(model, eval_ex, pad_id, micro_eval), 6)}
        return {}

    run = run_steps(
        step_module=step_module, params=list(trainable.values()), optimizer=optimizer, examples=train_ex,
        start=start, steps=opts.steps, batch_size=opts.batch_size, micro_batch_size=opts.micro_batch_size,
        seed=opts.seed, lr_at=opts.lr_at, max_grad_norm=opts.max_grad_norm, proc=proc, inputs=inputs, log=log,
        save=save, save_every=opts.save_every, desc=f"finetune ({method})", progress=progress, extra=extra,
    )  # fmt: skip
    model.eval()
    eval_after = evaluation_loss(model, eval_ex, pad_id, micro_eval) if eval_ex else None
    adapter_dir = out / "adapter"
    if proc.rank == 0:
        base_name = getattr(model.config, "_name_or_path", None) or None
        save_adapter(model, adapter_dir, adapter_name, base_model_name_or_path=base_name)
    proc.barrier()

    def ppl(loss: float | None) -> float | None:
        return None if loss is None else round(math.exp(min(loss, 50.0)), 4)

    summary = {
        "method": method,
        "adapter_dir": str(adapter_dir),
        "adapted_layers": len(adapted),
        "trainable_params": counts.trainable,
        "base_params": before.total,
        "trainable_fraction": round(counts.trainable / max(before.total, 1), 6),
        "frozen_base_bytes": counts.frozen_bytes,
        "float_base_bytes": before.total_bytes,
        "frozen_base_ratio": round(counts.frozen_bytes / max(before.total_bytes, 1), 4),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "train_sequences": len(train_ex),
        "eval_sequences": len(eval_ex),
        "eval_loss_before": None if eval_before is None else round(eval_before, 6),
        "eval_loss_after": None if eval_after is None else round(eval_after, 6),
        "perplexity_before": ppl(eval_before),
        "perplexity_after": ppl(eval_after),
        "steps": opts.steps,
        "resumed_from_step": start,
        "final_loss": run["final_loss"],
        "tokens_trained": run["tokens"],
        "seconds": round(run["seconds"], 2),
        "processes": proc.world,
        "quantization": quant_info,
        "options": run_options,
        "log": str(log.path),
    }
    if proc.rank == 0:
        write_json_atomic(summary, out / "finetune_summary.json")
    proc.close()
    return FinetuneResult(model, tokenizer, adapter_dir, summary)
