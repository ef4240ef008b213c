"""Fine-tuning data: JSONL records (or text) as token sequences with their loss masks.

One JSON object per line, in one of these forms (the first that applies):

- ``text_template`` given: the record's fields joined by the template,
  ``"<|user|>{question}<|end|><|assistant|>{answer}<|end|>"`` (Olive's ``--text_template``);
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: through the tokenizer's chat template;
- ``{"prompt": ..., "completion": ...}``;
- ``{"<text_field>": ...}`` (``"text"`` by default).

Messages and prompt/completion records are one sequence each (cut at ``seq_len``); with
``completion_only`` only the completion (the last assistant turn) is learned. Text and
template records, and plain text files, are joined with the end-of-text token and cut into
windows of ``seq_len`` tokens, every token learned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..distill.data import IGNORE_INDEX, Example, read_jsonl, text_examples


def _sequence(
    prompt_ids: list[int], completion_ids: list[int], seq_len: int, completion_only: bool
) -> Example:
    ids = np.asarray(prompt_ids + completion_ids, dtype=np.int64)[: seq_len + 1]
    labels = ids[1:].copy()
    if completion_only:  # position i predicts token i + 1: the prompt's tokens are not learned
        labels[: max(0, len(prompt_ids) - 1)] = IGNORE_INDEX
    return Example(ids, labels)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _chat(record: dict, tokenizer: Any, where: str) -> tuple[str, str]:
    """(prompt, completion) text of a chat record: the completion is the last assistant turn."""
    messages = record["messages"]
    if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"{where}: 'messages' needs a tokenizer with a chat template")
    if messages[-1].get("role") != "assistant":
        raise ValueError(f"{where}: the last message must be the assistant's (what is learned)")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prompt):
        raise ValueError(
            f"{where}: the chat template renders the conversation without its prompt as a prefix"
        )
    return prompt, full[len(prompt) :]


def load_finetune_examples(
    data: Any,
    tokenizer: Any,
    seq_len: int,
    *,
    text_template: str | None = None,
    text_field: str = "text",
    completion_only: bool = False,
) -> list[Example]:
    """Examples from a JSONL file (the forms above), a text file, or text (a string or a
    list of strings)."""
    eos = tokenizer.eos_token_id
    if isinstance(data, (str, os.PathLike)) and _is_file(data) and Path(data).suffix == ".jsonl":
        path = Path(data)
        texts: list[str] = []
        examples: list[Example] = []
        for i, record in read_jsonl(path):
            where = f"{path}:{i}"
            if text_template is not None:
                try:
                    texts.append(text_template.format_map(record))
                except KeyError as e:
                    raise ValueError(f"{where}: the text template needs field {e.args[0]!r}") from None
            elif "messages" in record:
                prompt, completion = _chat(record, tokenizer, where)
                ids = _encode(tokenizer, prompt), _encode(tokenizer, completion)
                examples.append(_sequence(*ids, seq_len, completion_only))
            elif isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
                completion = _encode(tokenizer, record["completion"]) + ([eos] if eos is not None else [])
                examples.append(
                    _sequence(_encode(tokenizer, record["prompt"]), completion, seq_len, completion_only)
                )
            elif isinstance(record.get(text_field), str):
                texts.append(record[text_field])
            else:
                raise ValueError(
                    f"{where}: expected 'messages', 'prompt' and 'completion', or {text_field!r} "
                    "(or pass a text template)"
                )
        if texts and examples:
            raise ValueError(f"{path}: mixes text records with prompt/completion or chat records")
        if texts and completion_only:
            raise ValueError(
                "completion_only needs prompt/completion or chat 'messages' records, not plain text"
            )
        if texts:
            examples = text_examples(texts, tokenizer, seq_len)
        examples = [e for e in examples if (e.labels != IGNORE_INDEX).any()]
    else:
        if completion_only:
            raise ValueError("completion_only needs a JSONL of prompt/completion or chat 'messages' records")
        if isinstance(data, (str, os.PathLike)) and _is_file(data):
            data = Path(data).read_text(encoding="utf-8")
        elif isinstance(data, os.PathLike):
            raise FileNotFoundError(f"training data {data} does not exist")
        if isinstance(data, str):
            data = [data]
        if not (isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data)):
            raise TypeError("data must be a .jsonl or text file, a string of text, or a list of strings")
        examples = text_examples(data, tokenizer, seq_len)
    if not examples:
        raise ValueError(
            f"the data gives no training sequence (of up to {seq_len} tokens with a learned token)"
        )
    return examples


def _is_file(data: Any) -> bool:
    try:
        return Path(data).is_file()
    except OSError:  # a long text is not a file name
        return False


def split_examples(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): a seeded random ``eval_fraction`` of the examples (at least one when
    the fraction is > 0) held out for evaluation."""
    if eval_fraction <= 0:
        return examples, []
    n_eval = max(1, round(len(examples) * eval_fraction))
    if n_eval >= len(examples):
        raise ValueError(
            f"{len(examples)} sequences are too few to hold out {eval_fraction:.0%} for evaluation"
        )
    order = np.random.default_rng((seed, 7)).permutation(len(examples))
    held = set(order[:n_eval].tolist())
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]
