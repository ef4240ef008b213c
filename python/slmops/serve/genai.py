"""The ``onnx-genai`` backend: an ONNX Runtime GenAI folder (what Foundry Local runs, what
``slmops export --target onnx-genai`` writes) served through ``onnxruntime_genai``.

:class:`GenAIEngine` offers the part of :class:`slmops.engine.Engine` the server uses
(``submit`` / ``step`` / ``cancel``, prompts, counts), so the worker, the routes and the
metrics are the same for both backends. Each request has its own ``og.Generator``; a step
advances every running one by a token in turn (interleaved, not batched into one matmul:
onnxruntime-genai 0.18's generators are per sequence). What onnxruntime-genai's search
cannot do is refused at submit: presence and frequency penalties and logprobs (the native
backend has them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import SamplingOptions
from ..engine.engine import Request, RequestQueue, chat_prompt_ids, encode_prompt

GENAI_CONFIG = "genai_config.json"


def is_genai_folder(path: str | Path) -> bool:
    return (Path(path) / GENAI_CONFIG).is_file()


class GenAIEngine(RequestQueue):
    """An ONNX Runtime GenAI folder behind the engine interface the server drives."""

    def __init__(self, folder: str | Path, *, max_batch: int = 8, max_context: int | None = None) -> None:
        import onnxruntime_genai as og
        from transformers import AutoTokenizer

        folder = Path(folder)
        if not is_genai_folder(folder):
            raise ValueError(f"{folder} is not an ONNX Runtime GenAI folder (no {GENAI_CONFIG})")
        config = json.loads((folder / GENAI_CONFIG).read_text())["model"]
        self._og = og
        self.model = og.Model(str(folder))
        # The folder's own tokenizer files, read by transformers: the chat template and the
        # incremental decoding the server shares with the native backend.
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.vocab = int(config["vocab_size"])
        self.max_context = int(min(config["context_length"], max_context or config["context_length"]))
        self.max_batch = max_batch
        self.kv_memory = 0  # onnxruntime-genai sizes each generator's cache itself
        eos = config.get("eos_token_id")
        self._eos = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        super().__init__()
        self._generators: dict[int, Any] = {}

    # -- prompts -------------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[int] | np.ndarray) -> np.ndarray:
        return encode_prompt(self.tokenizer, prompt, self.vocab)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> np.ndarray:
        return chat_prompt_ids(self.tokenizer, messages, self.vocab)

    # -- the engine interface ------------------------------------------------------------------
    def submit(
        self,
        prompt: str | Sequence[int] | np.ndarray,
        *,
        max_new_tokens: int = 128,
        stop_token_ids: Sequence[int] | None = None,
        sampling: SamplingOptions | None = None,
        logprobs: int | None = None,
    ) -> Request:
        sampling = sampling or SamplingOptions()
        if logprobs is not None:
            raise ValueError("logprobs: the onnx-genai backend has none (the native backend does)")
        if sampling.presence_penalty or sampling.frequency_penalty:
            raise ValueError("presence_penalty / frequency_penalty: onnxruntime-genai's search has neither")
        if sampling.min_p:
            raise ValueError("min_p: onnxruntime-genai's search has none")
        ids = self.encode(prompt)
        self._check_lengths(len(ids), max_new_tokens)
        stops = self._eos if stop_token_ids is None else frozenset(int(i) for i in stop_token_ids)
        req = Request(ids, max_new_tokens, stops, sampling)
        self._pending.append(req)
        return req

    def _start(self, req: Request) -> None:
        s: SamplingOptions = req.sampler
        params = self._og.GeneratorParams(self.model)
        search: dict[str, Any] = {
            "max_length": min(req.n_prompt + req.max_new_tokens, self.max_context),
            "do_sample": s.temperature > 0,
            "repetition_penalty": s.repetition_penalty,
            # The folder's config may hold a top_k (the builder writes 50): OpenAI's requests have
            # none, so it is the request's or off.
            "top_k": s.top_k or self.vocab,
        }
        if s.temperature > 0:
            search.update(temperature=s.temperature, top_p=s.top_p, random_seed=int(s.seed % (1 << 31)))
        params.set_search_options(**search)
        gen = self._og.Generator(self.model, params)
        gen.append_tokens(np.asarray(req.prompt, dtype=np.int32)[None])
        self._generators[id(req)] = gen

    def step(self) -> list[tuple[Request, int]]:
        while self._pending and len(self._running) < self.max_batch:
            req = self._pending.popleft()
            self._start(req)
            self._running.append(req)
        out = []
        for req in self._running:
            gen = self._generators[id(req)]
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
            req.append(token, self.max_context)
            if req.finish_reason is None and gen.is_done():  # onnxruntime-genai's own end: its EOS
                req.finish_reason = "stop" if token in self._eos else "length"
            out.append((req, token))
        for req in [r for r in self._running if r.finish_reason is not None]:
            self._running.remove(req)
            self._release(req)
        return out

    def _release(self, req: Request) -> None:
        self._generators.pop(id(req), None)

    @property
    def cache_usage(self) -> float:
        return 0.0  # not exposed by onnxruntime-genai
