"""``distill``: both stages of distillation, from model names or folders to a trained student
(``slmops.distill_model`` at the package root)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models import model_and_tokenizer
from ..training_options import options_from
from .data import load_examples
from .generate import generate_teacher_data
from .options import GenerationOptions, TrainingOptions
from .train import train_student


@dataclass
class DistillResult:
    model: Any  # the trained student
    tokenizer: Any
    model_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


def distill(
    teacher: Any,
    student: Any,
    out_dir: str | os.PathLike[str],
    *,
    prompts: str | os.PathLike[str] | None = None,
    data: Any = None,
    generation: GenerationOptions | dict | None = None,
    training: TrainingOptions | dict | None = None,
    offline: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> DistillResult:
    """Distills ``teacher`` into ``student`` (zoo names, Hugging Face folders, or
    ``(model, tokenizer)`` pairs) and writes the result to ``out_dir``.

    With ``prompts`` (a JSONL file of ``prompt`` or chat ``messages``), stage 1 writes
    ``out_dir/teacher_data.jsonl`` (kept and reused by a resumed run) and the student trains
    on it; otherwise it trains on ``data`` (stage 1 records, ``{"text"}`` JSONL, a text file
    or text). ``offline=True`` trains on the stored top-k log-probabilities only (stage 1
    with ``generation={"logprobs_k": k}``), without the teacher in memory; ``teacher`` may
    then be None when ``data`` holds such records.
    """
    from .._io import write_json_atomic

    if (prompts is None) == (data is None):
        raise ValueError("give exactly one of prompts (stage 1 runs first) or data (stage 2 only)")
    gen = options_from(GenerationOptions, generation, "generation")
    opts = options_from(TrainingOptions, training, "training")
    out = Path(out_dir)
    s_model, s_tok = model_and_tokenizer(student, "student")
    t_model = t_tok = None
    if teacher is not None:
        t_model, t_tok = model_and_tokenizer(teacher, "teacher")
        if t_tok.get_vocab() != s_tok.get_vocab():
            raise ValueError(
                "teacher and student tokenizers differ: logit distillation compares the same token ids "
                "(use a student with the teacher's tokenizer)"
            )
    elif prompts is not None or not offline:
        raise ValueError("teacher=None works only offline, on stored top-k records (offline=True, data=...)")
    summary: dict[str, Any] = {}
    if prompts is not None:
        records = out / "teacher_data.jsonl"
        if offline and gen.logprobs_k == 0:
            raise ValueError("offline=True needs the teacher's top-k: generation={'logprobs_k': k}")
        if not (resume and records.exists()):
            summary["generation"] = generate_teacher_data(
                t_model, t_tok, prompts, records, gen, progress=progress
            )
        data = records
    examples = load_examples(data, s_tok, opts.seq_len)
    trained, summary["training"] = train_student(
        s_model, s_tok, examples, out, opts,
        teacher=None if offline else t_model, resume=resume, progress=progress,
    )  # fmt: skip
    summary["examples"] = len(examples)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json_atomic(summary, out / "distill_summary.json")
    return DistillResult(trained, s_tok, out / "model", summary)
