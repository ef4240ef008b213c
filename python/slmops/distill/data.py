"""Distillation data: prompt files in, teacher records out (stage 1), and the token sequences
with their loss masks that the student trains on (stage 2).

A teacher record is one JSON line::

    {"input": <the prompt record as given>, "prompt": "<rendered prompt>",
     "completion": "<teacher text>", "prompt_ids": [...], "completion_ids": [...],
     "topk": {"k": 8, "ids": "<base64 uint32 [T, k]>", "logprobs": "<base64 float16 [T, k]>"}}

``topk`` (optional) holds, for each completion token, the teacher's k most likely next ids
and their log-probabilities at temperature 1, little-endian: 6 bytes per id, so k = 8 costs
48 bytes per token against 2 x vocab bytes for the full distribution.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._training import IGNORE_INDEX, Example  # the training loop's sequence, shared with finetune


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line; a line that is not a JSON object is an
    error naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{i}: each line must be a JSON object, got {type(record).__name__}")
            yield i, record


def render_prompt(record: dict, tokenizer: Any, where: str) -> str:
    """The prompt text of a prompt record: ``prompt`` as is, or chat ``messages`` through the
    tokenizer's chat template (with the assistant turn opened)."""
    if isinstance(record.get("prompt"), str):
        return record["prompt"]
    messages = record.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"{where}: 'messages' needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"{where}: a prompt record needs 'prompt' (a string) or 'messages' (chat turns)")


def read_prompts(path: str | os.PathLike[str], tokenizer: Any) -> list[tuple[dict, str]]:
    """(record, rendered prompt) for every line of a prompt JSONL file."""
    prompts = [(r, render_prompt(r, tokenizer, f"{path}:{i}")) for i, r in read_jsonl(path)]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def encode_topk(ids: np.ndarray, logprobs: np.ndarray) -> dict:
    return {
        "k": int(ids.shape[1]),
        "ids": base64.b64encode(ids.astype("<u4").tobytes()).decode(),
        "logprobs": base64.b64encode(logprobs.astype("<f2").tobytes()).decode(),
    }


def decode_topk(topk: dict, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    k = int(topk["k"])
    ids = np.frombuffer(base64.b64decode(topk["ids"]), dtype="<u4").astype(np.int64).reshape(tokens, k)
    lp = np.frombuffer(base64.b64decode(topk["logprobs"]), dtype="<f2").astype(np.float32).reshape(tokens, k)
    return ids, lp


def record_example(record: dict, seq_len: int, where: str) -> Example:
    """A teacher record as an example: the prompt is context, the completion is learned."""
    try:
        prompt = np.asarray(record["prompt_ids"], dtype=np.int64)
        completion = np.asarray(record["completion_ids"], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"{where}: a teacher record needs {e.args[0]!r} (written by stage 1)") from None
    if len(prompt) == 0 or len(completion) == 0:
        raise ValueError(f"{where}: empty prompt or completion")
    ids = np.concatenate([prompt, completion])[: seq_len + 1]
    labels = np.full(len(ids) - 1, IGNORE_INDEX, dtype=np.int64)
    first = len(prompt) - 1  # the position that predicts the first completion token
    labels[first:] = ids[first + 1 :]
    ex = Example(ids, labels)
    if "topk" in record:
        t_ids, t_lp = decode_topk(record["topk"], len(completion))
        k = t_ids.shape[1]
        ex.topk_ids = np.tile(np.arange(k, dtype=np.int64), (len(labels), 1))
        ex.topk_logprobs = np.full((len(labels), k), -30.0, dtype=np.float32)
        n = len(labels) - first
        ex.topk_ids[first:] = t_ids[:n]
        ex.topk_logprobs[first:] = t_lp[:n]
    return ex


def text_examples(texts: Iterable[str], tokenizer: Any, seq_len: int) -> list[Example]:
    """Plain text as non-overlapping windows of seq_len + 1 tokens, every position learned;
    documents are joined with the end-of-text token."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            stream.append(sep)
    ids = np.asarray(stream, dtype=np.int64)
    n = (len(ids) - 1) // seq_len
    windows = (ids[i * seq_len : (i + 1) * seq_len + 1] for i in range(n))
    return [Example(w, w[1:]) for w in windows]


def _is_file(data: Any) -> bool:
    if not isinstance(data, (str, os.PathLike)):
        return False
    try:
        return Path(data).is_file()
    except OSError:  # a long text is not a file name
        return False


def load_examples(data: Any, tokenizer: Any, seq_len: int) -> list[Example]:
    """Examples from a teacher-record JSONL (stage 1's output), a JSONL of ``{"text": ...}``,
    a text file, or text given directly (a string or a list of strings)."""
    if _is_file(data):
        path = Path(data)
        if path.suffix == ".jsonl":
            records = list(read_jsonl(path))
            if records and all("prompt_ids" in r for _, r in records):
                examples = [record_example(r, seq_len, f"{path}:{i}") for i, r in records]
            elif records and all(isinstance(r.get("text"), str) for _, r in records):
                examples = text_examples((r["text"] for _, r in records), tokenizer, seq_len)
            else:
                raise ValueError(
                    f'{path}: expected teacher records (from stage 1) or {{"text": ...}} on every line'
                )
        else:
            examples = text_examples([path.read_text(encoding="utf-8")], tokenizer, seq_len)
    elif isinstance(data, os.PathLike):
        raise FileNotFoundError(f"training data {data} does not exist")
    elif isinstance(data, str):
        examples = text_examples([data], tokenizer, seq_len)
    elif isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
        examples = text_examples(data, tokenizer, seq_len)
    else:
        raise TypeError("data must be a file path, a string of text or a list of strings")
    if not examples:
        raise ValueError(
            f"the training data gives no sequence of {seq_len + 1} tokens; use more text or a smaller seq_len"
        )
    return examples
