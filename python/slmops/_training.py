"""What distillation and fine-tuning share in their training loops: the training sequence
(:class:`Example`), the process's place in a torchrun launch, the seeded order of the data,
padding a batch, the model's last hidden states and head, the step log, and checkpoints a
run resumes from exactly. Their options and the learning-rate schedule are in
:mod:`slmops.training_options`. Nothing here imports an algorithm's package: imported
first, this module once met distill (which imports it) half initialized."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IGNORE_INDEX = -100  # a label that is not learned (a prompt token, padding)


@dataclass
class Example:
    """One training sequence: ``ids`` [L + 1]; position i predicts ids[i + 1] and counts when
    ``labels[i]`` is not IGNORE_INDEX. ``topk_ids``/``topk_logprobs`` [L, k]: the stored
    teacher at each position (rows of uncounted positions are filler)."""

    ids: np.ndarray
    labels: np.ndarray
    topk_ids: np.ndarray | None = None
    topk_logprobs: np.ndarray | None = None


def output_head(model: Any, what: str) -> Any:
    """The output projection's weight, refusing heads the fused loss would get wrong."""
    config = model.config
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, attr, None) not in (None, 1.0):
            raise ValueError(
                f"{type(model).__name__} transforms its logits ({attr}={getattr(config, attr)}); the fused "
                "loss takes plain hidden @ head logits"
            )
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__} needs a bias-free linear output head for {what}")
    return head.weight


def last_hidden(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """The final hidden states (after the last norm), without computing the logits."""
    base = getattr(model, model.base_model_prefix)
    return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def step_examples(examples: list[Example], batch_size: int, seed: int, step: int) -> list[Example]:
    """The sequences of optimizer step `step`: consecutive slices of seeded per-epoch
    permutations, so a resumed run sees the same data as an uninterrupted one."""
    out: list[Example] = []
    n = len(examples)
    orders: dict[int, np.ndarray] = {}  # a step spans at most a few epochs: one permutation each
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(i, n)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng((seed, epoch)).permutation(n)
        out.append(examples[orders[epoch][pos]])
    return out


def pad_batch(batch: list[Example], pad_id: int) -> dict:
    """input_ids, attention_mask and labels [B, L], right-padded to the longest example."""
    import torch

    L = max(len(e.labels) for e in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    labels = torch.full((len(batch), L), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(batch):
        n = len(e.labels)
        ids[b, :n] = torch.from_numpy(e.ids[:n])
        mask[b, :n] = 1
        labels[b, :n] = torch.from_numpy(e.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def counted_tokens(examples: list[Example]) -> int:
    return int(sum(int((e.labels != IGNORE_INDEX).sum()) for e in examples))


class Process:
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


class StepLog:
    """``train_log.jsonl``: one JSON object per line, written by rank 0; a resumed run drops
    the lines written after its checkpoint."""

    def __init__(self, path: Path, rank: int, resumed_step: int) -> None:
        from ._io import write_atomic

        self.path, self.rank = path, rank
        if rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if resumed_step and path.exists():
                lines = path.read_text().splitlines()
                kept = [line for line in lines if json.loads(line)["step"] <= resumed_step]
            write_atomic(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "checkpoints").glob("step-*"))


def save_checkpoint(
    out_dir: Path,
    step: int,
    write_weights: Callable[[Path], None],
    optimizer: Any,
    options: dict,
    keep: int,
) -> None:
    """``out_dir/checkpoints/step-NNNNNN/``: the weights (written by ``write_weights`` into
    the folder), the optimizer state and the options; only the newest ``keep`` remain."""
    import torch

    from ._io import atomic_dir, write_json_atomic

    with atomic_dir(out_dir / "checkpoints" / f"step-{step:06d}") as tmp:
        write_weights(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        write_json_atomic({"step": step, "options": options}, tmp / "state.json")
    for old in _checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _recorded(then: Any, defaults: Any) -> Any:
    """The options a checkpoint was made with: what it recorded, and for an option it does
    not record (one added since) the default, with which the run behaved as before."""
    if not isinstance(then, dict) or not isinstance(defaults, dict):
        return then
    return {**defaults, **{k: _recorded(v, defaults.get(k)) for k, v in then.items()}}


def resume_checkpoint(
    out_dir: Path, optimizer: Any, options: dict, resumable: tuple[str, ...], defaults: dict | None = None
) -> tuple[int, Path | None]:
    """Loads the optimizer state of the newest checkpoint; returns its step and folder (the
    caller loads the weights from it), or (0, None) when there is none. Options other than
    ``resumable`` must be those the checkpoint was made with; an option missing from an older
    checkpoint counts as its value in ``defaults`` (the options' defaults, nested as
    ``options``)."""
    import torch

    found = _checkpoints(out_dir)
    if not found:
        return 0, None
    ckpt = found[-1]
    state = json.loads((ckpt / "state.json").read_text())
    then = _recorded(state["options"], defaults or {})
    changed = [k for k in options if k not in resumable and options[k] != then.get(k)]
    if changed:
        raise ValueError(
            f"{ckpt} was made with different options "
            f"({', '.join(f'{k}: {then.get(k)!r} -> {options[k]!r}' for k in changed)}); "
            "resume with the same options or use a new output folder"
        )
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    return int(state["step"]), ckpt


def run_steps(
    *,
    step_module: Any,
    params: list,
    optimizer: Any,
    examples: list[Example],
    start: int,
    steps: int,
    batch_size: int,
    micro_batch_size: int,
    seed: int,
    lr_at: Callable[[int], float],
    max_grad_norm: float,
    proc: Process,
    inputs: Callable[[list[Example]], tuple],
    log: StepLog,
    save: Callable[[int], None] | None,
    save_every: int,
    desc: str,
    progress: bool,
    extra: Callable[[int], dict] | None = None,
) -> dict[str, float]:
    """Optimizer steps ``start`` .. ``steps``: each takes ``batch_size`` sequences, this
    process's share in micro-batches; ``step_module(*inputs(part), num_tokens)`` returns the
    loss of a micro-batch summed over its counted tokens and divided by the counted tokens of
    the whole step (all micro-batches, all processes), so accumulation and any number of
    processes give the gradient of one big batch. Under DDP only the last micro-batch syncs.
    ``save(step)`` (rank 0) writes a checkpoint every ``save_every`` steps and after the last;
    ``extra(step)`` adds fields to a step's log record (evaluation)."""
    import contextlib
    import time

    import torch
    from tqdm.auto import tqdm

    micro = micro_batch_size or math.ceil(batch_size / proc.world)
    t0 = time.perf_counter()
    tokens_total, last_loss = 0, float("nan")
    bar = tqdm(total=steps, initial=start, desc=desc, unit="step", disable=not progress or proc.rank > 0)
    for step in range(start, steps):
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mine = step_examples(examples, batch_size, seed, step)[proc.rank :: proc.world]
        counted = proc.sum(float(counted_tokens(mine)))
        # DDP averages gradients over processes: dividing by counted / world gives the sum / counted
        num_tokens = max(counted, 1.0) / proc.world
        parts = [mine[i : i + micro] for i in range(0, len(mine), micro)]
        loss_sum = 0.0
        for i, part in enumerate(parts):
            sync = proc.world == 1 or i == len(parts) - 1
            with contextlib.nullcontext() if sync else step_module.no_sync():
                loss = step_module(*inputs(part), num_tokens)
                loss.backward()
            loss_sum += float(loss.detach())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf")))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last_loss = proc.sum(loss_sum) / proc.world
        tokens_total += int(counted)
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}")
        record = {
            "step": step + 1, "loss": round(last_loss, 6), "lr": lr, "grad_norm": round(grad_norm, 4),
            "tokens": int(counted), "elapsed_s": round(time.perf_counter() - t0, 3),
        }  # fmt: skip
        if extra is not None:
            record.update(extra(step + 1))
        log.write(record)
        # the last step too: a finished run can be resumed with more steps
        if save is not None and save_every and ((step + 1) % save_every == 0 or step + 1 == steps):
            if proc.rank == 0:
                save(step + 1)
            proc.barrier()
    bar.close()
    return {"final_loss": last_loss, "tokens": tokens_total, "seconds": time.perf_counter() - t0}
