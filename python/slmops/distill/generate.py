"""Stage 1 of distillation: the teacher answers a file of prompts (synthetic data), in
batches, written as JSON lines of input and teacher output (see :mod:`.data`), optionally
with the teacher's top-k log-probabilities for every generated token."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .data import encode_topk, read_prompts
from .options import GenerationOptions  # defined with the other options of distillation


def generate_teacher_data(
    teacher: Any,
    tokenizer: Any,
    prompts: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: GenerationOptions | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs the teacher on every prompt of the JSONL file ``prompts`` (``prompt`` or chat
    ``messages`` per line) and writes the teacher records to ``out_path`` (whole or not at
    all). Returns a summary: records, tokens generated, seconds, bytes."""
    import torch
    from tqdm.auto import tqdm

    from .._io import write_atomic

    o = options or GenerationOptions()
    records = read_prompts(prompts, tokenizer)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    if o.logprobs_k >= vocab:
        raise ValueError(f"logprobs_k must be below the vocabulary size {vocab}, got {o.logprobs_k}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    torch.manual_seed(o.seed)
    lines, generated, t0 = [], 0, time.perf_counter()
    teacher.eval()
    try:
        bar = tqdm(total=len(records), desc="teacher generation", unit="prompt", disable=not progress)
        for start in range(0, len(records), o.batch_size):
            batch = records[start : start + o.batch_size]
            texts = [p for _, p in batch]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = teacher.generate(
                    **enc,
                    max_new_tokens=o.max_new_tokens,
                    do_sample=o.temperature > 0,
                    temperature=o.temperature if o.temperature > 0 else None,
                    top_p=o.top_p if o.temperature > 0 else None,
                    top_k=o.top_k if o.temperature > 0 else None,
                    pad_token_id=pad,
                    eos_token_id=eos,
                    return_dict_in_generate=True,
                    output_logits=o.logprobs_k > 0,  # raw logits: before temperature and top-k/top-p
                )
            new = out.sequences[:, enc["input_ids"].shape[1] :]
            if o.logprobs_k:
                logprobs = torch.log_softmax(torch.stack(out.logits, 1).float(), -1)  # [B, steps, V]
                top_lp, top_ids = logprobs.topk(o.logprobs_k, -1)
            for b, (record, prompt) in enumerate(batch):
                ids = new[b].tolist()
                if eos in ids:  # keep the end-of-text token: the student learns to stop
                    ids = ids[: ids.index(eos) + 1]
                prompt_ids = enc["input_ids"][b][enc["attention_mask"][b].bool()].tolist()
                line = {
                    "input": record,
                    "prompt": prompt,
                    "completion": tokenizer.decode(ids, skip_special_tokens=True),
                    "prompt_ids": prompt_ids,
                    "completion_ids": ids,
                }
                if o.logprobs_k:
                    n = len(ids)
                    line["topk"] = encode_topk(top_ids[b, :n].numpy(), top_lp[b, :n].numpy())
                lines.append(line)
                generated += len(ids)
            bar.update(len(batch))
        bar.close()
    finally:
        tokenizer.padding_side = old_side
    body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    write_atomic(out_path, body)
    seconds = time.perf_counter() - t0
    return {
        "records": len(lines),
        "generated_tokens": generated,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(generated / seconds, 1) if seconds > 0 else None,
        "bytes": Path(out_path).stat().st_size,
        "options": o.model_dump(),
        "bytes_per_token_topk": 6 * o.logprobs_k,
    }
