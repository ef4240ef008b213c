"""The OpenAI-compatible HTTP API over native-engine workers, as a Starlette app.

Routes: ``POST /v1/chat/completions`` and ``/v1/completions`` (whole or streamed as
server-sent events ending in ``data: [DONE]``), ``GET /v1/models``, ``/health`` (liveness,
never behind the key), ``/ready`` (every model's worker running) and ``/metrics``
(Prometheus). Every error is OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, with its 4xx status; prompts reach the log only with ``log_prompts``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydantic
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..engine import Engine, SamplingOptions, StopStrings, TextDecoder
from .genai import GenAIEngine
from .metrics import ServerMetrics
from .schemas import ChatCompletionRequest, CompletionRequest
from .worker import EngineWorker, Job, QueueFull, WorkerStopped, drive

log = logging.getLogger("slmops.serve")


@dataclass
class ServedModel:
    """A model the server answers for: ``name`` is what requests put in ``model``;
    ``engine`` a :class:`slmops.engine.Engine` (backend 'native') or a
    :class:`slmops.serve.genai.GenAIEngine` ('onnx-genai')."""

    name: str
    engine: Engine | GenAIEngine
    backend: str = "native"
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class ServerOptions:
    """``api_key``: required as ``Authorization: Bearer KEY`` on every route but /health.
    ``max_waiting``: requests queued per model beyond its running batch before 429.
    ``max_body_bytes``: larger request bodies are refused (413). ``default_max_tokens``: the
    generation limit of a chat request that sets none (the context caps every limit).
    ``log_prompts``: put prompt text in the log."""

    api_key: str | None = None
    max_waiting: int = 64
    max_body_bytes: int = 1 << 20
    default_max_tokens: int = 512
    log_prompts: bool = False


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _stopped() -> ApiError:
    """The error of a request the server cancelled while shutting down."""
    return ApiError(503, "the server stopped before the reply was complete", type_="unavailable_error")


def _failed(error: BaseException) -> ApiError:
    """The error of a request the server failed (a bug, logged with its traceback)."""
    return ApiError(500, f"generation failed: {error}", type_="server_error")


class _Served:
    """A served model with its worker."""

    def __init__(
        self, model: ServedModel, options: ServerOptions, metrics: ServerMetrics, wake: threading.Event | None
    ) -> None:
        self.model, self.engine, self.name = model, model.engine, model.name
        gauges = (metrics.running.labels(self.name), metrics.waiting.labels(self.name))
        usage = metrics.cache_usage.labels(self.name)

        def on_step(stats: Any) -> None:
            gauges[0].set(stats.running)
            gauges[1].set(stats.waiting)
            usage.set(stats.cache_usage)

        self.worker = EngineWorker(
            model.engine,
            max_waiting=options.max_waiting,
            on_step=on_step,
            name=f"slmops-engine-{model.name}",
            thread=wake is None,
            wake=wake,
        )
        self._token_texts: dict[int, str] = {}
        e = model.engine
        metrics.model_info.labels(
            self.name, model.backend, str(e.max_context), str(e.max_batch), str(e.kv_memory)
        ).set(1)

    def token_text(self, token: int) -> str:
        """A token's own text (for logprobs), decoded once."""
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = str(self.engine.tokenizer.decode([token]))
        return text


class _CountRequests:
    """ASGI middleware: every HTTP response counted by route and status (paths that are no
    route count as 'other', so a scan cannot grow the label set)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, endpoints: set[str]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            self.metrics.requests.labels(path if path in self.endpoints else "other", str(status)).inc()


def create_app(
    models: Sequence[ServedModel], options: ServerOptions | None = None, *, step_in_caller: bool = False
) -> Starlette:
    """The app serving ``models``. Each model's engine steps on a thread of its own, started
    now; with ``step_in_caller`` they all step in whichever thread calls ``app.state.drive()``
    (what :func:`slmops.serve.run` does from the main thread: see :class:`EngineWorker`)."""
    options = options or ServerOptions()
    if not models:
        raise ValueError("serve needs at least one model")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"served model names must differ, got {names}")
    metrics = ServerMetrics()
    wake = threading.Event() if step_in_caller else None
    served = {m.name: _Served(m, options, metrics, wake) for m in models}

    def check_key(request: Request) -> None:
        if options.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        # compare_digest: the time taken does not depend on how much of the key matches.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), options.api_key.encode()
        ):
            raise ApiError(
                401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key"
            )

    async def read_json(request: Request) -> Any:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > options.max_body_bytes:
            raise ApiError(413, f"the request body is over {options.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > options.max_body_bytes:
                raise ApiError(413, f"the request body is over {options.max_body_bytes} bytes")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None

    def parse(schema: type[pydantic.BaseModel], data: Any) -> Any:
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        try:
            return schema.model_validate(data)
        except pydantic.ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise ApiError(400, f"{param}: {first['msg']}", param=param) from None

    def model_for(name: str) -> _Served:
        if name not in served:
            raise ApiError(
                404,
                f"the model '{name}' is not served here (models: {', '.join(served)})",
                param="model",
                code="model_not_found",
            )
        return served[name]

    async def generate(request: Request, endpoint: str, schema: type[pydantic.BaseModel]) -> Response:
        arrived = time.perf_counter()
        check_key(request)
        body = parse(schema, await read_json(request))
        s = model_for(body.model)
        engine = s.engine
        chat = endpoint == "chat"
        if chat:
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            try:
                prompt = engine.chat_prompt(messages)
            except Exception as e:  # the template refuses the conversation (e.g. a role it has no place for)
                raise ApiError(400, f"messages: {e}", param="messages") from None
            prompt_text = messages
        else:
            if isinstance(body.prompt, str) and not body.prompt:
                raise ApiError(400, "prompt must not be empty", param="prompt")
            try:
                prompt = engine.encode(body.prompt)
            except ValueError as e:
                raise ApiError(400, f"prompt: {e}", param="prompt") from None
            prompt_text = body.prompt
        n_prompt = len(prompt)
        room = engine.max_context - n_prompt
        if room <= 0:
            raise ApiError(
                400,
                f"the prompt has {n_prompt} tokens; this model's context holds {engine.max_context}",
                param="messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        limit = body.token_limit()
        max_new = min(limit if limit is not None else options.default_max_tokens, room)
        seed = body.seed if body.seed is not None else secrets.randbits(63)
        sampling = SamplingOptions(
            temperature=body.temperature,
            top_p=body.top_p,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            seed=seed % (1 << 64),
        )
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        if options.log_prompts:
            log.info("%s %s prompt=%r", rid, s.name, prompt_text)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def deliver(event: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: the server is gone
                pass

        job = Job(
            prompt,
            max_new,
            sampling,
            deliver,
            stop_token_ids=[] if body.ignore_eos else None,
            logprobs=body.alternatives(),
        )
        try:
            s.worker.submit(job)
        except QueueFull as e:
            raise ApiError(
                429,
                f"too many requests waiting for '{s.name}' ({e}); retry shortly",
                type_="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            ) from None
        except WorkerStopped as e:
            raise ApiError(503, f"'{s.name}' is not serving ({e})", type_="unavailable_error") from None
        run = _Run(s, metrics, job, events, body.stop_strings(), arrived, n_prompt, rid)
        try:
            await run.first()
        except BaseException:
            s.worker.cancel(job)
            raise
        created = int(time.time())
        if not body.stream:
            try:
                text = await run.all_text()
            finally:
                s.worker.cancel(job)  # a no-op once it finished
            if run.failure is not None:
                raise _failed(run.failure)
            if run.reason == "cancelled":
                raise _stopped()
            if not chat and body.echo and isinstance(body.prompt, str):
                text = body.prompt + text
            choice: dict[str, Any] = {
                "index": 0,
                "logprobs": run.logprobs_field(chat, run.take_logprobs()),
                "finish_reason": run.reason,
            }
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            run.log_finished(stream=False)
            return JSONResponse(
                {
                    "id": rid,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": created,
                    "model": s.name,
                    "choices": [choice],
                    "usage": run.usage(),
                }
            )
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None = None, role: bool = False) -> str:
            lps = run.logprobs_field(chat, run.take_logprobs())
            c: dict[str, Any] = {"index": 0, "logprobs": lps, "finish_reason": finish}
            if chat:
                d: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if delta is not None:
                    d["content"] = delta
                c["delta"] = d
            else:
                c["text"] = delta or ""
            payload = {"id": rid, "object": obj, "created": created, "model": s.name, "choices": [c]}
            if include_usage:
                payload["usage"] = None
            return f"data: {json.dumps(payload)}\n\n"

        async def sse() -> AsyncIterator[str]:
            try:
                if chat:
                    yield chunk(None, role=True)
                elif body.echo and isinstance(body.prompt, str):
                    yield chunk(body.prompt)
                async for piece in run.pieces():
                    yield chunk(piece)
                if run.failure is not None:
                    yield f"data: {json.dumps(_failed(run.failure).body())}\n\n"
                elif run.reason == "cancelled":
                    yield f"data: {json.dumps(_stopped().body())}\n\n"
                else:
                    yield chunk(None, finish=run.reason)
                    if include_usage:
                        usage = {
                            "id": rid,
                            "object": obj,
                            "created": created,
                            "model": s.name,
                            "choices": [],
                            "usage": run.usage(),
                        }
                        yield f"data: {json.dumps(usage)}\n\n"
                yield "data: [DONE]\n\n"
                run.log_finished(stream=True)
            finally:  # a client gone mid-stream lands here too: its sequence leaves the batch
                s.worker.cancel(job)
                if run.reason is None:
                    metrics.finished.labels(s.name, "abort").inc()

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def chat_completions(request: Request) -> Response:
        return await generate(request, "chat", ChatCompletionRequest)

    async def completions(request: Request) -> Response:
        return await generate(request, "completion", CompletionRequest)

    async def list_models(request: Request) -> Response:
        check_key(request)
        data = [
            {"id": n, "object": "model", "created": s.model.created, "owned_by": "slmops"}
            for n, s in served.items()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        check_key(request)
        down = [n for n, s in served.items() if not s.worker.alive]
        if down:
            raise ApiError(503, f"not serving: {', '.join(down)}", type_="unavailable_error")
        return JSONResponse({"status": "ready", "models": list(served)})

    async def metrics_route(request: Request) -> Response:
        check_key(request)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), type_=type_).response()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for s in served.values():  # in-flight requests end as cancelled
            s.worker.stop(timeout=10)

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error}, lifespan=lifespan
    )
    app.state.metrics = metrics
    app.state.workers = {n: s.worker for n, s in served.items()}
    if step_in_caller:
        app.state.drive = lambda: drive([s.worker for s in served.values()])
    app.add_middleware(_CountRequests, metrics=metrics, endpoints={r.path for r in routes})
    return app


class _Run:
    """One request's events from the worker, turned into text, timings and counts."""

    def __init__(
        self,
        served: _Served,
        metrics: ServerMetrics,
        job: Job,
        events: asyncio.Queue[tuple[str, Any]],
        stops: list[str],
        arrived: float,
        n_prompt: int,
        rid: str,
    ) -> None:
        self.served, self.job, self.events = served, job, events
        self.arrived, self.n_prompt, self.rid = arrived, n_prompt, rid
        self.text = TextDecoder(served.engine.tokenizer)
        self.stops = StopStrings(stops)
        name = served.name
        self.ttft, self.itl, self.e2e = (
            metrics.ttft.labels(name),
            metrics.itl.labels(name),
            metrics.e2e.labels(name),
        )
        self.gen_counter = metrics.generation_tokens.labels(name)
        self.prompt_counter = metrics.prompt_tokens.labels(name)
        self.finished = metrics.finished
        self.generated = 0
        self.reason: str | None = None
        self._last: float | None = None
        self._pending: tuple[str, Any] | None = None
        self.failure: BaseException | None = None  # set when the server failed the request
        self.wants_logprobs = job.logprobs is not None
        self._unsent: list[Any] = []  # TokenLogprobs not yet in a response
        self._token_text = served.token_text
        self._text_offset = 0  # legacy completions: where the next token's text starts

    async def first(self) -> None:
        """Waits for the first event: a refused prompt raises ApiError here (before any
        response has started, so it is a plain 4xx)."""
        event = await self.events.get()
        if event[0] == "error":
            e = event[1]
            raise ApiError(400, str(e), param="max_tokens" if "max_new_tokens" in str(e) else None) from None
        if event[0] == "failed":
            self._finish("error")
            raise _failed(event[1])
        self.prompt_counter.inc(self.n_prompt)
        self._pending = event

    async def _events(self) -> AsyncIterator[tuple[str, Any]]:
        if self._pending is not None:
            event, self._pending = self._pending, None
            yield event
        while True:
            yield await self.events.get()

    async def pieces(self) -> AsyncIterator[str]:
        """The reply's text as it comes (stop strings cut it and end the request)."""
        async for kind, value, *more in self._events():
            if kind == "tokens":
                if more and more[0]:
                    self._unsent += more[0]
                now = time.perf_counter()
                if self._last is None:
                    self.ttft.observe(now - self.arrived)
                else:
                    self.itl.observe(now - self._last)
                self._last = now
                self.generated += len(value)
                self.gen_counter.inc(len(value))
                shown, stopped = self.stops.feed(self.text.push(value))
                if shown:
                    yield shown
                if stopped:
                    self.served.worker.cancel(self.job)
                    self._finish("stop")
                    return
            elif kind == "done":
                tail = self.stops.flush()
                if tail:
                    yield tail
                self._finish(value)
                return
            else:  # ("failed", exception): the server failed it mid-generation
                self.failure = value
                self._finish("error")
                return

    def _finish(self, reason: str) -> None:
        self.reason = reason
        if reason not in ("cancelled", "error"):
            self.e2e.observe(time.perf_counter() - self.arrived)
        self.finished.labels(self.served.name, reason).inc()

    def log_finished(self, stream: bool) -> None:
        """The request's log line: id, model, tokens, finish reason, time (never the prompt)."""
        log.info(
            "%s %s %d+%d tokens %s %.3fs%s",
            self.rid,
            self.served.name,
            self.n_prompt,
            self.generated,
            self.reason,
            time.perf_counter() - self.arrived,
            " (stream)" if stream else "",
        )

    def take_logprobs(self) -> list[Any]:
        taken, self._unsent = self._unsent, []
        return taken

    def logprobs_field(self, chat: bool, entries: list[Any]) -> dict[str, Any] | None:
        """A choice's ``logprobs`` for these tokens, in the endpoint's shape (None when the
        request asked for none)."""
        if not self.wants_logprobs:
            return None
        text = self._token_text
        if chat:

            def item(token: int, logprob: float) -> dict[str, Any]:
                s = text(token)
                return {"token": s, "logprob": logprob, "bytes": list(s.encode())}

            content = [
                {**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                for e in entries
            ]
            return {"content": content, "refusal": None}
        tokens = [text(e.token) for e in entries]
        offsets = np.cumsum([0, *map(len, tokens)])[:-1] + self._text_offset
        self._text_offset += sum(map(len, tokens))
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{text(t): lp for t, lp in e.top} for e in entries],
            "text_offset": [int(o) for o in offsets],
        }

    async def all_text(self) -> str:
        return "".join([piece async for piece in self.pieces()])

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.n_prompt,
            "completion_tokens": self.generated,
            "total_tokens": self.n_prompt + self.generated,
        }
