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

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import IGNORE_INDEX, Example

# options a resumed run may change; any other difference from the checkpoint is an error
RESUMABLE_CHANGES = ("steps", "save_every", "keep_checkpoints")


@dataclass(frozen=True)
class TrainingOptions:
    steps: int = 200
    batch_size: int = 8  # sequences per optimizer step, over all processes
    micro_batch_size: int = 0  # sequences per forward pass (0: the whole share of a process)
    seq_len: int = 256
    lr: float = 1e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    divergence: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    hard_weight: float = 0.0  # 1.0: plain next-token cross entropy (the text-only baseline)
    scale_t2: bool = True
    init: str = "pretrained"  # "scratch": the student's architecture, freshly initialized (seeded)
    save_every: int = 0  # checkpoint every N steps (0: none)
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "seq_len", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("micro_batch_size", "warmup_steps", "save_every", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need lr > 0 and 0 <= min_lr_ratio <= 1")
        if self.init not in ("pretrained", "scratch"):
            raise ValueError(f"init must be 'pretrained' or 'scratch', got {self.init!r}")
        from ..ops.kd import KDOptions

        KDOptions(
            self.divergence, self.temperature, self.beta, "sum", IGNORE_INDEX, self.hard_weight, self.scale_t2
        )

    def lr_at(self, step: int) -> float:
        """Linear warm-up over warmup_steps, then cosine to lr * min_lr_ratio (step from 0)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cos)


def _head(model: Any) -> Any:
    """The output projection's weight, refusing heads the fused loss would get wrong."""
    config = model.config
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, attr, None) not in (None, 1.0):
            raise ValueError(
                f"{type(model).__name__} transforms its logits ({attr}={getattr(config, attr)}); the fused "
                "distillation loss takes plain hidden @ head logits"
            )
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__} needs a bias-free linear output head for distillation")
    return head.weight


def _hidden(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    base = getattr(model, model.base_model_prefix)
    return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _batches(examples: list[Example], opts: TrainingOptions, step: int) -> list[Example]:
    """The sequences of optimizer step `step`: consecutive slices of seeded per-epoch
    permutations, so a resumed run sees the same data as an uninterrupted one."""
    out: list[Example] = []
    n = len(examples)
    orders: dict[int, np.ndarray] = {}  # a step spans at most a few epochs: one permutation each
    for i in range(step * opts.batch_size, (step + 1) * opts.batch_size):
        epoch, pos = divmod(i, n)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng((opts.seed, epoch)).permutation(n)
        out.append(examples[orders[epoch][pos]])
    return out


def _collate(batch: list[Example], pad_id: int, offline: bool) -> dict:
    import torch

    from ..nn import TeacherTopK

    L = max(len(e.labels) for e in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    labels = torch.full((len(batch), L), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(batch):
        n = len(e.labels)
        ids[b, :n] = torch.from_numpy(e.ids[:n])
        mask[b, :n] = 1
        labels[b, :n] = torch.from_numpy(e.labels)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if offline:
        k = batch[0].topk_ids.shape[1]
        t_ids = torch.arange(k).repeat(len(batch), L, 1)  # filler rows: distinct ids, never counted
        t_lp = torch.full((len(batch), L, k), -30.0)
        for b, e in enumerate(batch):
            n = len(e.labels)
            t_ids[b, :n] = torch.from_numpy(e.topk_ids)
            t_lp[b, :n] = torch.from_numpy(e.topk_logprobs)
        out["teacher"] = TeacherTopK(t_ids, t_lp)
    return out


class _Process:
    """This process's place in a torchrun launch (or a single process)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.created = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
            self.created = True
        self.rank = dist.get_rank() if self.world > 1 else 0

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch

        t = torch.tensor([value], dtype=torch.float64)
        self.dist.all_reduce(t)
        return float(t[0])

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def close(self) -> None:
        if self.created:
            self.dist.destroy_process_group()


def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "checkpoints").glob("step-*"))


def _save_checkpoint(out_dir: Path, step: int, student: Any, optimizer: Any, opts: TrainingOptions) -> None:
    import torch
    from safetensors.torch import save_model

    from .._io import atomic_dir, write_json_atomic

    with atomic_dir(out_dir / "checkpoints" / f"step-{step:06d}") as tmp:
        save_model(student, str(tmp / "model.safetensors"))  # handles tied embedding/head
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        write_json_atomic({"step": step, "options": asdict(opts)}, tmp / "state.json")
    for old in _checkpoints(out_dir)[: -opts.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _resume(out_dir: Path, student: Any, optimizer: Any, opts: TrainingOptions) -> int:
    """Loads the newest checkpoint; returns its step (0 when there is none)."""
    import torch
    from safetensors.torch import load_model

    found = _checkpoints(out_dir)
    if not found:
        return 0
    ckpt = found[-1]
    state = json.loads((ckpt / "state.json").read_text())
    now, then = asdict(opts), state["options"]
    changed = [k for k in now if k not in RESUMABLE_CHANGES and now[k] != then.get(k)]
    if changed:
        raise ValueError(
            f"{ckpt} was made with different options "
            f"({', '.join(f'{k}: {then.get(k)!r} -> {now[k]!r}' for k in changed)}); "
            "resume with the same options or use a new output folder"
        )
    load_model(student, str(ckpt / "model.safetensors"))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    return int(state["step"])


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
    from tqdm.auto import tqdm

    from .._io import atomic_dir, write_atomic
    from ..nn import FusedLinearKDLoss, TeacherHidden

    opts = options or TrainingOptions()
    out = Path(out_dir)
    offline = teacher is None
    if offline and any(e.topk_ids is None for e in examples):
        raise ValueError(
            "without a teacher model every training record needs the teacher's top-k log-probabilities "
            "(stage 1 with logprobs_k > 0); pass a teacher to distill online"
        )
    proc = _Process()
    if proc.world > opts.batch_size:
        raise ValueError(f"batch_size {opts.batch_size} is smaller than the {proc.world} processes")
    if opts.init == "scratch":
        torch.manual_seed(opts.seed)
        student = type(student)(student.config)
    student.train()
    _head(student)
    if teacher is not None:
        teacher.eval()
        teacher_head = _head(teacher).detach()
    loss_fn = FusedLinearKDLoss(
        opts.divergence, temperature=opts.temperature, beta=opts.beta, hard_weight=opts.hard_weight,
        scale_t2=opts.scale_t2,
    )  # fmt: skip

    class StudentLoss(torch.nn.Module):  # the module DDP wraps: the student and its loss
        def __init__(self) -> None:
            super().__init__()
            self.student = student

        def forward(self, input_ids, attention_mask, labels, teacher_side, num_tokens):
            hidden = _hidden(self.student, input_ids, attention_mask)
            return loss_fn(hidden, _head(self.student), teacher_side, labels, num_tokens)

    step_module = StudentLoss()
    if proc.world > 1:
        step_module = torch.nn.parallel.DistributedDataParallel(step_module)
    decay = [p for p in student.parameters() if p.ndim >= 2]
    rest = [p for p in student.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=opts.lr, betas=(0.9, 0.95),
    )  # fmt: skip
    start = _resume(out, student, optimizer, opts) if resume else 0
    log_path = out / "train_log.jsonl"
    if proc.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        kept = []
        if start and log_path.exists():  # drop the lines written after the checkpoint
            kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= start]
        write_atomic(log_path, "".join(line + "\n" for line in kept))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    micro = opts.micro_batch_size or math.ceil(opts.batch_size / proc.world)
    t0 = time.perf_counter()
    tokens_total, last_loss = 0, float("nan")
    quiet = not progress or proc.rank > 0
    bar = tqdm(total=opts.steps, initial=start, desc="distill", unit="step", disable=quiet)
    for step in range(start, opts.steps):
        lr = opts.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mine = _batches(examples, opts, step)[proc.rank :: proc.world]
        counted = proc.sum(float(sum(int((e.labels != IGNORE_INDEX).sum()) for e in mine)))
        # DDP averages gradients over processes: dividing by counted / world gives the sum / counted
        num_tokens = max(counted, 1.0) / proc.world
        parts = [mine[i : i + micro] for i in range(0, len(mine), micro)]
        loss_sum = 0.0
        for i, part in enumerate(parts):
            batch = _collate(part, pad_id, offline)
            if not offline:
                with torch.no_grad():
                    t_hidden = _hidden(teacher, batch["input_ids"], batch["attention_mask"])
                batch["teacher"] = TeacherHidden(t_hidden.float(), teacher_head)
            sync = proc.world == 1 or i == len(parts) - 1
            ctx = step_module.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                loss = step_module(
                    batch["input_ids"], batch["attention_mask"], batch["labels"], batch["teacher"], num_tokens
                )
                loss.backward()
            loss_sum += float(loss.detach())
        clip = opts.max_grad_norm or float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(student.parameters(), clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last_loss = proc.sum(loss_sum) / proc.world
        tokens_total += int(counted)
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}")
        if proc.rank == 0:
            record = {
                "step": step + 1, "loss": round(last_loss, 6), "lr": lr, "grad_norm": round(grad_norm, 4),
                "tokens": int(counted), "elapsed_s": round(time.perf_counter() - t0, 2),
            }  # fmt: skip
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        # the last step too: a finished run can be resumed with more steps
        if opts.save_every and ((step + 1) % opts.save_every == 0 or step + 1 == opts.steps):
            if proc.rank == 0:
                _save_checkpoint(out, step + 1, student, optimizer, opts)
            proc.barrier()
    bar.close()
    seconds = time.perf_counter() - t0
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
        "final_loss": last_loss,
        "tokens_trained": tokens_total,
        "seconds": round(seconds, 2),
        "processes": proc.world,
        "teacher": "top-k log-probabilities (offline)" if offline else "model (online)",
        "options": asdict(opts),
        "log": str(log_path),
    }
    proc.close()
    return student, summary
