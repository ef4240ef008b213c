"""``Engine``: generation on the native C++ decode engine, one prompt or many at once."""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _C
from ..models import model_and_tokenizer
from .cache import DEFAULT_KV_DTYPE, DEFAULT_KV_MEMORY, KV_DTYPES
from .sampling import SamplingOptions
from .text import TextDecoder
from .weights import cache_block_bytes, engine_model_args, token_array

CacheFullError = _C.CacheFullError


@dataclass
class Generation:
    """One finished generation. ``finish_reason``: 'stop' (a stop token, not included in
    ``tokens``) or 'length' (``max_new_tokens`` or the context reached)."""

    prompt_tokens: list[int]
    tokens: list[int]
    text: str
    finish_reason: str


MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs


@dataclass
class TokenLogprob:
    """The model's log-probability of a generated token (its raw distribution: before
    penalties and temperature) and the ``top`` most likely tokens with theirs."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


class Request:
    """A prompt in the engine (what :meth:`Engine.submit` returns): its tokens so far in one
    buffer (prompt, then generated), ``history`` (the generated ones), ``finish_reason``
    (None while running; 'stop', 'length' or 'cancelled'), and with ``logprobs`` (the number
    of alternatives wanted) one :class:`TokenLogprob` per generated token in ``logprobs_out``."""

    def __init__(
        self,
        prompt: np.ndarray,
        max_new_tokens: int,
        stop_ids: frozenset[int],
        sampler: Any,
        logprobs: int | None = None,
    ) -> None:
        self.n_prompt = len(prompt)
        self.tokens = np.zeros(self.n_prompt + max_new_tokens, dtype=np.int32)
        self.tokens[: self.n_prompt] = prompt
        self.length = self.n_prompt
        self.max_new_tokens, self.stop_ids, self.sampler = max_new_tokens, stop_ids, sampler
        self.logprobs = logprobs
        self.logprobs_out: list[TokenLogprob] = []
        self.sequence = -1
        self.finish_reason: str | None = None

    @property
    def prompt(self) -> np.ndarray:
        return self.tokens[: self.n_prompt]

    def append(self, token: int, max_context: int) -> None:
        """Adds a generated token; a stop token ends the request with 'stop', its
        ``max_new_tokens`` or the context with 'length'."""
        self.tokens[self.length] = token
        self.length += 1
        if token in self.stop_ids:
            self.finish_reason = "stop"
        elif self.length - self.n_prompt >= self.max_new_tokens or self.length >= max_context:
            self.finish_reason = "length"

    @property
    def history(self) -> list[int]:
        """The generated tokens (a stop token included)."""
        return self.tokens[self.n_prompt : self.length].tolist()


def encode_prompt(tokenizer: Any, prompt: str | Sequence[int] | np.ndarray, vocab: int) -> np.ndarray:
    """Token ids of a text (the tokenizer's, with its special tokens) or of given ids."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer: pass (model, tokenizer) or give token ids")
        prompt = tokenizer(prompt)["input_ids"]
    return token_array(prompt, vocab)


def chat_prompt_ids(tokenizer: Any, messages: Sequence[dict[str, str]], vocab: int) -> np.ndarray:
    """Token ids of ``messages`` through the tokenizer's chat template, ready for the reply."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template")
    if not messages:
        raise ValueError("messages must not be empty")
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return token_array(ids, vocab)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    top = z.max()
    return z - (top + np.log(np.exp(z - top).sum()))


def _top(lp: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest, largest first (the lower id on ties)."""
    k = min(k, len(lp))
    if k <= 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-lp, k - 1)[:k]
    return part[np.lexsort((part, -lp[part]))]


class RequestQueue(ABC):
    """The queue both engines keep (this one and the server's onnx-genai backend): submitted
    requests wait in ``_pending`` until ``step`` admits them to ``_running``; ``cancel``
    drops one from either. Subclasses set ``max_context`` and free a running request's
    resources in ``_release``."""

    max_context: int

    def __init__(self) -> None:
        self._pending: deque[Request] = deque()
        self._running: list[Request] = []

    def _check_lengths(self, n_prompt: int, max_new_tokens: int) -> None:
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if n_prompt >= self.max_context:
            raise ValueError(f"the prompt has {n_prompt} tokens; the context holds {self.max_context}")

    @abstractmethod
    def _release(self, req: Request) -> None:
        """Frees what a running request holds (its sequence, its generator)."""

    def cancel(self, req: Request) -> None:
        """Drops a queued or running request and frees what it holds."""
        if req in self._pending:
            self._pending.remove(req)
        elif req in self._running:
            self._running.remove(req)
            self._release(req)
        req.finish_reason = req.finish_reason or "cancelled"

    @property
    def running(self) -> int:
        """Requests in the batch."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet admitted to the batch."""
        return len(self._pending)


class Engine(RequestQueue):
    """A model on the native engine: a Llama-family decoder (Llama, Mistral, Qwen2, Phi-3) in C++
    over slmops' kernels, every linear as the model holds it (float, any ``QuantLinear``
    format, ``SparseLinear`` n:m or CSR).

    ``model``: a zoo name, a model folder, a GGUF file, an slmops checkpoint, or a
    ``(model, tokenizer)`` pair (a transformers model; quantize it first with
    ``slmops.quantize_model`` to run a quantized format). The engine shares the model's
    float tensors and quantized buffers: do not change them while it is in use.

    ``head_format``: quantize the output head (and, when tied, the embedding, one table
    for both as llama.cpp stores it) to this ``slmops.ops`` format, e.g. ``"q8_0"``; None
    keeps the model's own; 'auto' (default) is q8_0 with int8 activations when the model's
    linears are quantized or sparse and its head is float (an fp32 head would be most of
    the bytes a decode step reads), else None. A head format given by name takes the
    activation mode of the model's quantized linears, int8 if they have none.

    ``kv_memory``: bytes of the KV cache, shared by every sequence (blocks of
    ``block_tokens`` positions, a multiple of 16); ``kv_dtype``: 'float16' (half the memory
    and bandwidth of 'float32', as llama.cpp's default cache; keys and values rounded to 11
    significant bits), 'int8' (0.53x float16's bytes at head size 64: each token's key and
    value of each head as int8 codes with one scale, absmax / 127; what long contexts and
    large batches read is then half) or 'float32' (the model's math exactly);
    ``max_context``: positions one sequence may hold (default: the model's, capped by what
    the cache holds). ``max_batch``: sequences decoded together by :meth:`step`.
    """

    def __init__(
        self,
        model: Any,
        *,
        head_format: str | None = "auto",
        kv_memory: int = DEFAULT_KV_MEMORY,
        kv_dtype: str = DEFAULT_KV_DTYPE,
        max_context: int | None = None,
        block_tokens: int = 16,
        max_batch: int = 32,
        max_step_tokens: int = 512,
    ) -> None:
        if isinstance(model, (str, os.PathLike, tuple)):
            model, tokenizer = model_and_tokenizer(model)
        else:
            tokenizer = None
        for name, v in (("kv_memory", kv_memory), ("block_tokens", block_tokens), ("max_batch", max_batch),
                        ("max_step_tokens", max_step_tokens)):  # fmt: skip
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.kv_memory = max_batch, kv_memory
        context = int(max_context or getattr(model.config, "max_position_embeddings", 0) or 2048)
        args = engine_model_args(model, head_format=head_format, max_context=context)
        block_bytes = cache_block_bytes(args["config"], block_tokens, kv_dtype)
        max_blocks = kv_memory // block_bytes
        if max_blocks < 1:
            raise ValueError(f"kv_memory={kv_memory} bytes holds no cache block ({block_bytes} bytes)")
        if max_context is None:
            args["config"]["max_context"] = min(context, max_blocks * block_tokens)
        self.max_context: int = args["config"]["max_context"]
        self.vocab: int = args["config"]["vocab"]
        self._native = _C.EngineModel(
            **args,
            block_tokens=block_tokens,
            max_blocks=max_blocks,
            max_step_tokens=max_step_tokens,
            kv_dtype=kv_dtype,
        )
        self.block_tokens = block_tokens
        super().__init__()

    # -- inputs ------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[int] | np.ndarray) -> np.ndarray:
        """Token ids of a text (the tokenizer's, with its special tokens) or of given ids."""
        return encode_prompt(self.tokenizer, prompt, self.vocab)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> np.ndarray:
        """Token ids of ``messages`` through the tokenizer's chat template, ready for the reply."""
        return chat_prompt_ids(self.tokenizer, messages, self.vocab)

    def default_stop_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if eos is not None:
                ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        return frozenset(int(i) for i in ids)

    # -- generation --------------------------------------------------------------------
    def logits(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logits [len(tokens), vocab] of a fresh sequence (no cache kept): for tests and scoring."""
        ids = self.encode(tokens)
        seq = self._native.add_sequence()
        try:
            return self._native.forward([(seq, ids, True)])
        finally:
            self._native.remove_sequence(seq)

    def submit(
        self,
        prompt: str | Sequence[int] | np.ndarray,
        *,
        max_new_tokens: int = 128,
        stop_token_ids: Sequence[int] | None = None,
        sampling: SamplingOptions | None = None,
        logprobs: int | None = None,
    ) -> Request:
        """Queues a prompt; :meth:`step` advances it with every other queued or running one.
        ``logprobs``: record each generated token's log-probability and this many alternatives
        (0 to 20) in ``Request.logprobs_out``."""
        ids = self.encode(prompt)
        is_int = isinstance(logprobs, int) and not isinstance(logprobs, bool)
        if logprobs is not None and not (is_int and 0 <= logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(f"logprobs must be an int in [0, {MAX_TOP_LOGPROBS}] or None, got {logprobs!r}")
        self._check_lengths(len(ids), max_new_tokens)
        if self._blocks_needed(len(ids), max_new_tokens) > self._native.max_blocks:
            raise CacheFullError(
                f"a prompt of {len(ids)} tokens with max_new_tokens={max_new_tokens} needs more KV cache "
                f"than the engine has ({self._native.max_blocks} blocks of {self.block_tokens} tokens): "
                "raise kv_memory or lower max_new_tokens"
            )
        stops = (
            self.default_stop_ids() if stop_token_ids is None else frozenset(int(i) for i in stop_token_ids)
        )
        req = Request(ids, max_new_tokens, stops, (sampling or SamplingOptions()).sampler(), logprobs)
        self._pending.append(req)
        return req

    def _blocks_needed(self, n_prompt: int, max_new_tokens: int) -> int:
        return math.ceil(min(n_prompt + max_new_tokens, self.max_context) / self.block_tokens)

    def step(self) -> list[tuple[Request, int]]:
        """One engine step: queued requests join while the batch and the cache have room
        (each is admitted with cache reserved for its whole generation, so a running
        sequence never runs out), their prompts run with the running sequences' next
        tokens in one forward, and each gets its next token. Returns (request, token) per
        request that produced one; finished requests leave the batch."""
        reserved = sum(self._blocks_needed(len(r.prompt), r.max_new_tokens) for r in self._running)
        joined: list[Request] = []
        while self._pending and len(self._running) + len(joined) < self.max_batch:
            need = self._blocks_needed(len(self._pending[0].prompt), self._pending[0].max_new_tokens)
            if reserved + need > self._native.max_blocks:
                break
            req = self._pending.popleft()
            req.sequence = self._native.add_sequence()
            reserved += need
            joined.append(req)
        active = self._running + joined
        if not active:
            return []
        entries = [(r.sequence, r.tokens[r.length - 1 : r.length], False) for r in self._running]
        entries += [(r.sequence, r.prompt, False) for r in joined]
        try:
            logits = self._native.forward(entries)
        except BaseException:
            for r in joined:  # back to the queue, as if never admitted
                self._native.remove_sequence(r.sequence)
                self._pending.appendleft(r)
            raise
        # Log-probabilities from the raw logits, before the sampler's penalties change them.
        wanted = {i: _log_softmax(logits[i]) for i, r in enumerate(active) if r.logprobs is not None}
        histories = [r.tokens[: r.length] for r in active]
        tokens = _C.sample_rows([r.sampler for r in active], logits, histories, [r.n_prompt for r in active])
        out = []
        for i, (r, token) in enumerate(zip(active, tokens.tolist(), strict=True)):
            if i in wanted:
                lp = wanted[i]
                top = [(int(j), float(lp[j])) for j in _top(lp, r.logprobs)]
                r.logprobs_out.append(TokenLogprob(token, float(lp[token]), top))
            r.append(token, self.max_context)
            out.append((r, token))
        self._running = [r for r in active if r.finish_reason is None]
        for r in active:
            if r.finish_reason is not None:
                self._release(r)
        return out

    @property
    def cache_usage(self) -> float:
        """The fraction of the KV cache's blocks in use."""
        return self._native.used_blocks / self._native.max_blocks

    def profile(self, on: bool | None = None) -> dict[str, float]:
        """Seconds spent per phase of the forward pass (embed, qkv, attention, ...) since
        profiling was last turned on; ``on`` turns it on (zeroing the counts) or off."""
        if on is not None:
            self._native.set_profiling(bool(on))
        return dict(self._native.profile)

    def _release(self, req: Request) -> None:
        self._native.remove_sequence(req.sequence)  # its cache blocks go back to the pool

    def _finish(self, req: Request) -> Generation:
        tokens = req.history[:-1] if req.finish_reason == "stop" else req.history
        text = self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer is not None else ""
        return Generation([int(t) for t in req.prompt], tokens, text, str(req.finish_reason))

    def generate(self, prompt: str | Sequence[int] | np.ndarray, **options: Any) -> Generation:
        """Generates from one prompt (text or ids). ``options``: ``max_new_tokens``,
        ``stop_token_ids`` (default: the model's end-of-sequence ids), ``sampling``."""
        return self.generate_batch([prompt], **options)[0]

    def generate_batch(
        self, prompts: Sequence[str | Sequence[int] | np.ndarray], **options: Any
    ) -> list[Generation]:
        """Generates from every prompt, ``max_batch`` sequences advancing together (each joins
        as another finishes). Results in the order of ``prompts``."""
        if self._running or self._pending:
            raise RuntimeError(
                "generate_batch needs an idle engine: requests submitted with submit() are pending"
            )
        reqs = [self.submit(p, **options) for p in prompts]
        try:
            while self._running or self._pending:
                self.step()
        except BaseException:
            for r in reqs:
                self.cancel(r)
            raise
        return [self._finish(r) for r in reqs]

    def stream(self, prompt: str | Sequence[int] | np.ndarray, **options: Any) -> Iterator[str]:
        """Yields the text of the reply as it is generated (whole characters only)."""
        if self.tokenizer is None:
            raise ValueError("stream() yields text and needs a tokenizer; use submit()/step() for ids")
        if self._running or self._pending:
            raise RuntimeError("stream needs an idle engine: requests submitted with submit() are pending")
        req = self.submit(prompt, **options)
        text = TextDecoder(self.tokenizer)
        try:
            while req.finish_reason is None:
                for r, token in self.step():
                    if r is req and not (r.finish_reason == "stop" and token in r.stop_ids):
                        piece = text.push([token])
                        if piece:
                            yield piece
        finally:
            if req.finish_reason is None:
                self.cancel(req)
