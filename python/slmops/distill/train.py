"""Stage 2 of distillation: the student learns the teacher's distribution with the fused
linear KD loss (its logits are never materialized for the whole batch).

The teacher is online (a model: its final hidden states and head go to the loss as
``TeacherHidden``, computed chunk by chunk beside the student's) or offline (top-k
log-probabilities stored by stage 1). Optimizer steps take ``batch_size`` sequences; each
process takes its share in micro-batches and the loss of every micro-batch is divided by
the counted tokens of the whole step, so gradient accumulation and any number of processes
give the gradient of one big batch. Launched by ``torchrun`` the step runs under
DistributedDataParallel (gloo on the CPU); rank 0 writes the files.

Outputs in ``out_dir``: ``model/`` (a Hugging Face folder), ``train_log.jsonl`` (one line per
step), ``checkpoints/step-NNNNNN/`` (student, optimizer, step; resumable).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._training import (
    Process,
    StepLog,
    last_hidden,
    output_head,
    pad_batch,
    resume_checkpoint,
    run_steps,
    save_checkpoint,
)
from .data import Example
from .options import TrainingOptions  # defined with the other options of distillation

# options a resumed run may change; any other difference from the checkpoint is an error
RESUMABLE_CHANGES = ("steps", "save_every", "keep_checkpoints")


PRUNED_ZERO_SHARE = 0.1  # exact zeros in a linear weight that mark it as pruned


def _pruned_masks(model: Any) -> dict[str, Any]:
    """Name -> the nonzero mask of each linear weight at least ``PRUNED_ZERO_SHARE`` zero."""
    import torch

    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            nonzero = module.weight.detach() != 0
            if 1.0 - nonzero.float().mean().item() >= PRUNED_ZERO_SHARE:
                masks[name] = nonzero
    return masks


def _apply_masks(model: Any, masks: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for name, mask in masks.items():
            model.get_submodule(name).weight.mul_(mask)


def _collate(batch: list[Example], pad_id: int, offline: bool) -> dict:
    """The padded batch, and with ``offline`` the stored teacher as TeacherTopK."""
    import torch

    from ..nn import TeacherTopK

    out = pad_batch(batch, pad_id)
    if offline:
        B, L = out["labels"].shape
        k = batch[0].topk_ids.shape[1]
        t_ids = torch.arange(k).repeat(B, L, 1)  # filler rows: distinct ids, never counted
        t_lp = torch.full((B, L, k), -30.0)
        for b, e in enumerate(batch):
            n = len(e.labels)
            t_ids[b, :n] = torch.from_numpy(e.topk_ids)
            t_lp[b, :n] = torch.from_numpy(e.topk_logprobs)
        out["teacher"] = TeacherTopK(t_ids, t_lp)
    return out


def train_student(
    student: Any,
    tokenizer: Any,
    examples: list[Example],
    out_dir: str | os.PathLike[str],
    options: TrainingOptions | None = None,
    *,
    teacher: Any = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Trains ``student`` on ``examples`` against ``teacher`` (a model; None: the examples'
    stored top-k) and saves it to ``out_dir/model``. Returns the trained student (a new
    model with ``init="scratch"``) and the run's summary."""
    import torch
    from safetensors.torch import load_model, save_model

    from .._io import atomic_dir, check_writable
    from ..nn import FusedLinearKDLoss, TeacherHidden

    opts = options or TrainingOptions()
    out = Path(out_dir)
    check_writable(out / "model")  # before training: the model must not replace a user's folder
    offline = teacher is None
    if offline and any(e.topk_ids is None for e in examples):
        raise ValueError(
            "without a teacher model every training record needs the teacher's top-k log-probabilities "
            "(stage 1 with logprobs_k > 0); pass a teacher to distill online"
        )
    proc = Process()
    if proc.world > opts.batch_size:
        raise ValueError(f"batch_size {opts.batch_size} is smaller than the {proc.world} processes")
    if opts.init == "scratch":
        torch.manual_seed(opts.seed)
        student = type(student)(student.config)
    student.train()
    output_head(student, "distillation")
    if teacher is not None:
        teacher.eval()
        teacher_head = output_head(teacher, "distillation").detach()
    loss_fn = FusedLinearKDLoss(
        opts.divergence, temperature=opts.temperature, beta=opts.beta, hard_weight=opts.hard_weight,
        scale_t2=opts.scale_t2,
    )  # fmt: skip

    class StudentLoss(torch.nn.Module):  # the module DDP wraps: the student and its loss
        def __init__(self) -> None:
            super().__init__()
            self.student = student

        def forward(self, input_ids, attention_mask, labels, teacher_side, num_tokens):
            hidden = last_hidden(self.student, input_ids, attention_mask)
            head = output_head(self.student, "distillation")
            return loss_fn(hidden, head, teacher_side, labels, num_tokens)

    step_module = StudentLoss()
    if proc.world > 1:
        step_module = torch.nn.parallel.DistributedDataParallel(step_module)
    decay = [p for p in student.parameters() if p.ndim >= 2]
    rest = [p for p in student.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=opts.lr, betas=(0.9, 0.95),
    )  # fmt: skip
    start = 0
    if resume:
        start, ckpt = resume_checkpoint(
            out, optimizer, opts.model_dump(), RESUMABLE_CHANGES, defaults=TrainingOptions().model_dump()
        )
        if ckpt is not None:
            load_model(student, str(ckpt / "model.safetensors"))
    kept = _pruned_masks(student) if opts.keep_sparsity and opts.init == "pretrained" else {}
    if kept:  # the update after each step would refill the pruned weights: zero them again
        optimizer.register_step_post_hook(lambda *_: _apply_masks(student, kept))
    log = StepLog(out / "train_log.jsonl", proc.rank, start)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def inputs(part: list[Example]) -> tuple:
        batch = _collate(part, pad_id, offline)
        if not offline:
            with torch.no_grad():
                t_hidden = last_hidden(teacher, batch["input_ids"], batch["attention_mask"])
            batch["teacher"] = TeacherHidden(t_hidden.float(), teacher_head)
        return batch["input_ids"], batch["attention_mask"], batch["labels"], batch["teacher"]

    def save(step: int) -> None:  # save_model handles the tied embedding and head
        write = lambda tmp: save_model(student, str(tmp / "model.safetensors"))  # noqa: E731
        save_checkpoint(out, step, write, optimizer, opts.model_dump(), opts.keep_checkpoints)

    run = run_steps(
        step_module=step_module, params=list(student.parameters()), optimizer=optimizer, examples=examples,
        start=start, steps=opts.steps, batch_size=opts.batch_size, micro_batch_size=opts.micro_batch_size,
        seed=opts.seed, lr_at=opts.lr_at, max_grad_norm=opts.max_grad_norm, proc=proc, inputs=inputs, log=log,
        save=save, save_every=opts.save_every, desc="distill", progress=progress,
    )  # fmt: skip
    model_dir = out / "model"
    if proc.rank == 0:
        with atomic_dir(model_dir) as tmp:
            student.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    proc.barrier()
    summary = {
        "model_dir": str(model_dir),
        "steps": opts.steps,
        "resumed_from_step": start,
        "final_loss": run["final_loss"],
        "tokens_trained": run["tokens"],
        "seconds": round(run["seconds"], 2),
        "processes": proc.world,
        "teacher": "top-k log-probabilities (offline)" if offline else "model (online)",
        "sparse_linears_kept": len(kept),
        "options": opts.model_dump(),
        "log": str(log.path),
    }
    proc.close()
    return student, summary
