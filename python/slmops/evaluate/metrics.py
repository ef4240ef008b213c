"""``slmops.evaluate_model`` (``slmops.evaluate.evaluate``): perplexity, speed and memory of
any Hugging Face causal LM, including models whose linears are ``QuantLinear``."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _C
from .._io import write_json_atomic

METRICS = ("perplexity", "speed", "memory")
DEFAULT_SEQ_LEN = 512


def _context_length(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None)


def _vocab_size(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "vocab_size", None)


def _token_ids(data: Any, tokenizer: Any, model: Any) -> torch.Tensor:
    """The evaluation text as a 1-D LongTensor of token ids."""
    if data is None:
        raise ValueError(
            "perplexity needs data: a text (str), a pathlib.Path of a UTF-8 text file, or token ids"
        )
    if isinstance(data, os.PathLike):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation text {path} does not exist")
        data = path.read_text(encoding="utf-8")
    if isinstance(data, str):
        if tokenizer is None:
            raise ValueError("data is text, so a tokenizer is needed to turn it into token ids")
        ids = torch.tensor(tokenizer(data)["input_ids"], dtype=torch.long)
    else:
        ids = torch.as_tensor(data, dtype=torch.long).reshape(-1)
    vocab = _vocab_size(model)
    if ids.numel() and vocab is not None and int(ids.max()) >= vocab:
        raise ValueError(
            f"token id {int(ids.max())} is outside the model's vocabulary of {vocab}: "
            "the tokenizer does not belong to this model"
        )
    if ids.numel() < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {ids.numel()}")
    return ids


@torch.inference_mode()
def perplexity(model: Any, ids: torch.Tensor, seq_len: int, stride: int) -> dict[str, Any]:
    """Sliding-window perplexity: windows of seq_len tokens every stride tokens, each token
    predicted once, with up to seq_len - stride tokens of context from the previous window.
    ppl = exp(total negative log-likelihood / predicted tokens)."""
    n = ids.numel()
    nll, predicted, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + seq_len, n)
        window = ids[begin:end].unsqueeze(0)
        logits = model(window).logits[0, :-1].float()
        targets = window[0, 1:]
        # targets[j] is token begin + 1 + j; the previous windows predicted every token
        # before prev_end, so this one counts from there (each token is predicted once).
        first = max(prev_end - begin - 1, 0)
        logp = torch.log_softmax(logits[first:], dim=-1)
        nll -= float(logp.gather(1, targets[first:].unsqueeze(1)).sum())
        predicted += targets[first:].numel()
        prev_end = end
        if end == n:
            break
    return {
        "perplexity": math.exp(nll / predicted),
        "nll_per_token": nll / predicted,
        "tokens": predicted,
        "seq_len": seq_len,
        "stride": stride,
    }


def _percentile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


SPEED_BACKENDS = ("auto", "engine", "torch")


def _engine_runs(model: Any, prompt: Any, decode_tokens: int, runs: int) -> list[tuple[float, list[float]]]:
    """(prefill seconds, decode step seconds) per run on the native engine: the prompt and
    the first token in one step, then one greedy step per token, sampling included."""
    from ..engine import Engine

    engine = Engine(model, max_context=len(prompt) + decode_tokens + 1)
    out = []
    for _ in range(runs):
        req = engine.submit(prompt, max_new_tokens=decode_tokens + 1, stop_token_ids=[])
        t0 = time.perf_counter()
        engine.step()
        prefill = time.perf_counter() - t0
        steps = []
        while req.finish_reason is None:
            t = time.perf_counter()
            engine.step()
            steps.append(time.perf_counter() - t)
        out.append((prefill, steps))
    return out


@torch.inference_mode()
def _torch_runs(model: Any, prompt: Any, decode_tokens: int, runs: int) -> list[tuple[float, list[float]]]:
    """The same measure through transformers' forward with its cache."""
    from transformers import DynamicCache

    ids = torch.as_tensor(prompt).unsqueeze(0)
    out = []
    for _ in range(runs):
        cache = DynamicCache()
        t0 = time.perf_counter()
        logits = model(ids, cache=cache, use_cache=True).logits
        prefill = time.perf_counter() - t0
        token = logits[:, -1:].argmax(-1)
        steps = []
        for _ in range(decode_tokens):
            t = time.perf_counter()
            token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            steps.append(time.perf_counter() - t)
        out.append((prefill, steps))
    return out


def speed(
    model: Any, prompt_tokens: int, decode_tokens: int, repeats: int, warmup: int, backend: str = "auto"
) -> dict[str, Any]:
    """Prefill and decode throughput: median and p90 over repeats, warm-up runs excluded.
    ``backend``: 'engine' (slmops' native engine, what ``slmops generate`` and the server
    run), 'torch' (transformers' forward) or 'auto' (the engine where it runs the model's
    architecture)."""
    from ..engine.weights import ARCHITECTURES

    if backend not in SPEED_BACKENDS:
        raise ValueError(f"backend must be one of {SPEED_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = (
            "engine"
            if getattr(getattr(model, "config", None), "model_type", None) in ARCHITECTURES
            else "torch"
        )
    vocab = _vocab_size(model) or 256
    ctx = _context_length(model)
    if ctx is not None and prompt_tokens + decode_tokens > ctx:
        raise ValueError(
            f"prompt_tokens + decode_tokens = {prompt_tokens + decode_tokens} exceeds the model's "
            f"context of {ctx} tokens"
        )
    prompt = (np.arange(prompt_tokens) * 7919 % vocab).astype(np.int64)
    runs = (_engine_runs if backend == "engine" else _torch_runs)(
        model, prompt, decode_tokens, warmup + repeats
    )
    prefill_s = [p for p, _ in runs[warmup:]]
    decode_s = [t for _, steps in runs[warmup:] for t in steps]
    return {
        "backend": backend,
        "prefill_tokens_per_s": prompt_tokens / statistics.median(prefill_s),
        "prefill_tokens_per_s_p90": prompt_tokens / _percentile(prefill_s, 0.9),  # p90 time: the slow tail
        "decode_tokens_per_s": 1.0 / statistics.median(decode_s),
        "decode_tokens_per_s_p90": 1.0 / _percentile(decode_s, 0.9),
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "slmops_threads": _C.get_num_threads(),
    }


def reset_peak_rss() -> bool:
    """Resets the process's peak resident set size; False where the OS cannot (not Linux)."""
    try:  # Linux: writing 5 resets the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _proc_status_bytes(field: str) -> int | None:
    """A size line of /proc/self/status (Linux), in bytes; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size since start or the last :func:`reset_peak_rss`."""
    return _proc_status_bytes("VmHWM")


def rss_bytes() -> int | None:
    """The process's resident set size now."""
    return _proc_status_bytes("VmRSS")


class PeakGrowth:
    """``with PeakGrowth() as g: work()``: ``g.bytes`` is how far the process's resident set
    rose at its peak during the work over what it held before (None where the OS cannot
    tell, not Linux)."""

    def __enter__(self) -> PeakGrowth:
        import gc

        gc.collect()
        self._held, self._tracked = rss_bytes(), reset_peak_rss()
        self.bytes: int | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        peak = peak_rss_bytes() if self._tracked else None
        self.bytes = None if peak is None or self._held is None else peak - self._held


def memory(model: Any, model_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Bytes of parameters and buffers (quantized buffers included) and of the weight files."""
    in_memory = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    on_disk = None
    directory = model_dir or getattr(getattr(model, "config", None), "_name_or_path", None)
    if directory and Path(directory).is_file():  # a single-file model (GGUF)
        on_disk = Path(directory).stat().st_size
    elif directory and Path(directory).is_dir():
        on_disk = sum(
            p.stat().st_size
            for p in Path(directory).iterdir()
            if p.suffix in (".safetensors", ".bin", ".gguf", ".onnx") and p.is_file()
        )
    return {"model_bytes_in_memory": in_memory, "model_bytes_on_disk": on_disk}


def evaluate(
    model: Any,
    tokenizer: Any = None,
    metrics: Sequence[str] = ("perplexity",),
    data: Any = None,
    *,
    seq_len: int | None = None,
    stride: int | None = None,
    prompt_tokens: int = 64,
    decode_tokens: int = 32,
    repeats: int = 5,
    warmup: int = 1,
    model_dir: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """Evaluates a Hugging Face causal LM and returns (and, with ``output``, writes as JSON)
    a dict with one entry per metric:

    - ``perplexity`` of ``data`` (a str with ``tokenizer``, a ``pathlib.Path`` of a text
      file, or token ids) with
      windows of ``seq_len`` tokens (default: the model's context, at most 512) every
      ``stride`` (default seq_len // 2); the number of
      predicted tokens is reported.
    - ``speed``: prefill and decode tokens/s, median and p90 over ``repeats`` runs after
      ``warmup`` runs, with the thread counts, on ``backend``: 'auto' (slmops' native
      engine for the architectures it runs, else transformers), 'engine' or 'torch'.
    - ``memory``: peak resident memory of this evaluation (Linux), model bytes in memory and
      of the weight files in ``model_dir`` (or the model's own folder).
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; expected some of {METRICS}")
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, _context_length(model) or DEFAULT_SEQ_LEN)
    stride = stride or max(1, seq_len // 2)
    if "perplexity" in metrics:
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        ctx = _context_length(model)
        if ctx is not None and seq_len > ctx:
            raise ValueError(f"seq_len {seq_len} is longer than the model's context of {ctx} tokens")
        if not 1 <= stride <= seq_len:
            raise ValueError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
    was_training = getattr(model, "training", False)
    model.eval()
    tracked = "memory" in metrics and reset_peak_rss()
    result: dict[str, Any] = {"slmops": _C.build_info()["version"]}
    try:
        if "perplexity" in metrics:
            result["perplexity"] = perplexity(model, _token_ids(data, tokenizer, model), seq_len, stride)
        if "speed" in metrics:
            result["speed"] = speed(model, prompt_tokens, decode_tokens, repeats, warmup, backend)
        if "memory" in metrics:
            result["memory"] = {
                **memory(model, model_dir),
                "peak_rss_bytes": peak_rss_bytes() if tracked else None,
            }
    finally:
        model.train(was_training)
    if output is not None:
        write_json_atomic(result, output)
    return result
