"""slmops serve under load, against the engine's own offline decode in the same run.

The model (SmolLM2-135M-Instruct by default) is quantized by RTN to int4 g32 with int8
activations and a q8_0 head, as ``slmops bench engine``'s int4 row, and served on a
loopback port. Clients run in a separate process (their JSON and SSE parsing would
otherwise share the server's interpreter): for each concurrency level, that many clients
each stream ``--requests`` completions one after another (a 128-token prompt, 128 new
tokens, greedy, ``ignore_eos``). Reported per level: requests/s, aggregate generated
tokens/s (prompt to last token), time to first token and inter-token latency (p50, p99),
failures, and the client process's CPU time per generated token (it shares the machine's
cores with the server); the offline figure is the same request through ``Engine.generate``
on the same engine, prompt to last token (the median of two runs before and two after the
server).
Targets: 1 client at least 0.9x offline, 16 clients at least 3x 1 client, no failure, TTFT
p99 under 2 s.

``--load-test N`` then sends N requests from 16 clients: a mix of streamed and whole
chat and text completions of a set of prompts whose greedy answers are known offline,
10% malformed (bad JSON, wrong types, unknown model: each must get a 4xx), 5% dropped
after their first chunk; every well-formed answer must equal its offline text, and the
server's RSS after the test must stay within 10% of its RSS after warm-up.

    slmops bench serve                                 # SmolLM2 int4, 1/4/16/32 clients
    slmops bench serve --clients 1,16 --load-test 2000 --json serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.util
import json
import multiprocessing as mp
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

import slmops

from . import write_report

PROMPT_TOKENS, NEW_TOKENS = 128, 128
MODEL_NAME = "bench"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _stream_one(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed completion: arrival times of its tokens and its text."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    times: list[float] = []
    text: list[str] = []
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            return {"ok": False, "status": r.status}
        for line in r:  # server-sent events, one "data: {...}" line each
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            piece = chunk["choices"][0]["text"] if chunk.get("choices") else ""
            if piece:
                times.append(time.perf_counter())
                text.append(piece)
    finally:
        conn.close()
    return {"ok": True, "start": t0, "times": times, "text": "".join(text)}


def _load_client(url: str, clients: int, requests: int, prompts: list[list[int]], out: Any) -> None:
    """Process body: ``clients`` concurrent streams (a thread each, blocking on its socket),
    each ``requests`` in a row. Threads on the standard library's HTTP client cost a
    fourth of the CPU a token of an httpx asyncio client (1 client: 123-133 against
    515-841 us, docs/serve.md), CPU taken from the cores the server runs on."""
    per_client: list[list[dict[str, Any]]] = [[] for _ in range(clients)]

    def client_loop(k: int) -> None:
        for i in range(requests):
            body = {
                "model": MODEL_NAME,
                "prompt": prompts[(k * requests + i) % len(prompts)],
                "max_tokens": NEW_TOKENS,
                "temperature": 0,
                "stream": True,
                "ignore_eos": True,
            }
            try:
                per_client[k].append(_stream_one(url, body))
            except OSError as e:  # refused or reset: a failed request, not a lost thread
                per_client[k].append({"ok": False, "error": repr(e)})

    cpu0, t0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    out.put({"wall": wall, "results": [r for rs in per_client for r in rs], "cpu": cpu})


def _run_clients(url: str, clients: int, requests: int, prompts: list[list[int]]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_load_client, args=(url, clients, requests, prompts, q))
    proc.start()
    got = q.get()
    proc.join()
    ok = [r for r in got["results"] if r["ok"]]
    tokens = sum(len(r["times"]) for r in ok)  # one SSE chunk per token (no stop strings here)
    ttft = [r["times"][0] - r["start"] for r in ok if r["times"]]
    itl = [b - a for r in ok for a, b in zip(r["times"][:-1], r["times"][1:], strict=True)]
    return {
        "clients": clients,
        "requests": len(got["results"]),
        "failed": len(got["results"]) - len(ok),
        "requests_per_s": len(ok) / got["wall"],
        "tokens_per_s": tokens / got["wall"],
        "ttft_p50": _percentile(ttft, 50),
        "ttft_p99": _percentile(ttft, 99),
        "itl_p50": _percentile(itl, 50),
        "itl_p99": _percentile(itl, 99),
        # The clients' own CPU (HTTP, SSE and JSON parsing) runs on the cores the engine uses.
        "client_cpu_per_token": got["cpu"] / max(tokens, 1),
    }


def _generate(engine: Any, prompt: Any, new_tokens: int, stop_token_ids: list[int] | None = None) -> Any:
    """One request through ``submit``/``step`` (either backend): the finished Request."""
    from slmops.engine import SamplingOptions

    req = engine.submit(
        prompt, max_new_tokens=new_tokens, stop_token_ids=stop_token_ids, sampling=SamplingOptions()
    )
    while req.finish_reason is None:
        engine.step()
    return req


def _offline(engine: Any, prompt: list[int]) -> float:
    """Generated tokens/s of one request as a client sees it, on the backend directly: from
    submitting the prompt to its last token (prefill included, as in the served figure)."""
    t0 = time.perf_counter()
    _generate(engine, np.array(prompt), NEW_TOKENS, stop_token_ids=[])
    return NEW_TOKENS / (time.perf_counter() - t0)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _load_test_client(url: str, n: int, cases: list[dict[str, Any]], seed: int, out: Any) -> None:
    """Process body of the load test: n requests from 16 clients; returns the failures."""
    import httpx

    rng = random.Random(seed)
    plan = []
    for _ in range(n):
        u = rng.random()
        plan.append(
            (
                "malformed" if u < 0.10 else "cancel" if u < 0.15 else "ok",
                rng.randrange(len(cases)),
                rng.random() < 0.5,
            )
        )
    bad_bodies = [
        b"{not json",
        json.dumps({"model": MODEL_NAME, "prompt": "x", "temperature": "hot"}).encode(),
        json.dumps({"model": "nope", "prompt": "x"}).encode(),
        json.dumps({"model": MODEL_NAME, "messages": []}).encode(),
    ]

    async def one(client: Any, kind: str, case: dict[str, Any], stream: bool) -> str | None:
        endpoint = "/v1/chat/completions" if case["chat"] else "/v1/completions"
        if kind == "malformed":
            r = await client.post(
                url + endpoint, content=rng.choice(bad_bodies), headers={"Content-Type": "application/json"}
            )
            return None if 400 <= r.status_code < 500 else f"malformed request got {r.status_code}"
        body = {**case["body"], "stream": stream or kind == "cancel"}
        if body["stream"]:
            async with client.stream("POST", url + endpoint, json=body) as r:
                if r.status_code != 200:
                    return f"status {r.status_code}"
                text = []
                async for line in r.aiter_lines():
                    if kind == "cancel":  # gone after the first line
                        return None
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choice = json.loads(line[6:])["choices"][0]
                    text.append(
                        (choice.get("delta") or {}).get("content") or "" if case["chat"] else choice["text"]
                    )
                got = "".join(text)
        else:
            r = await client.post(url + endpoint, json=body)
            if r.status_code != 200:
                return f"status {r.status_code}"
            choice = r.json()["choices"][0]
            got = choice["message"]["content"] if case["chat"] else choice["text"]
        return None if got == case["expect"] else f"wrong answer {got[:40]!r} != {case['expect'][:40]!r}"

    async def main() -> list[str]:
        failures: list[str] = []
        queue_: asyncio.Queue[tuple[str, int, bool]] = asyncio.Queue()
        for item in plan:
            queue_.put_nowait(item)
        async with httpx.AsyncClient(timeout=600) as client:

            async def worker() -> None:
                while not queue_.empty():
                    kind, i, stream = queue_.get_nowait()
                    err = await one(client, kind, cases[i], stream)
                    if err:
                        failures.append(err)

            await asyncio.gather(*(worker() for _ in range(16)))
        return failures

    out.put(asyncio.run(main()))


def _load_test_cases(engine: Any) -> list[dict[str, Any]]:
    """Chat and text requests with their offline greedy answers (16 tokens each)."""
    texts = [
        "In the beginning",
        "And the LORD said unto Moses",
        "The capital of France is",
        "Once upon a time",
        "Water boils at",
        "The quick brown fox",
        "Blessed are the meek",
        "In a hole in the ground",
    ]
    cases = []
    for i, t in enumerate(texts):
        chat = i % 2 == 1
        messages = [{"role": "user", "content": t}]
        prompt = engine.chat_prompt(messages) if chat else engine.encode(t)
        expect = engine.tokenizer.decode(_generate(engine, prompt, 16).history, skip_special_tokens=True)
        body: dict[str, Any] = {"model": MODEL_NAME, "max_tokens": 16, "temperature": 0}
        body.update({"messages": messages} if chat else {"prompt": t})
        cases.append({"chat": chat, "body": body, "expect": expect})
    return cases


def _serve_and_load(
    engine: Any, backend: str, clients: list[int], requests: int, load_test: int, prompts: list[list[int]]
) -> dict[str, Any]:
    """Offline, then the served levels and the load test, then offline again, on ``engine``."""
    from slmops.serve import BackgroundServer, ServedModel, ServerOptions, create_app

    cases = _load_test_cases(engine) if load_test else []
    offline = [_offline(engine, prompts[0]) for _ in range(2)]
    levels: list[dict[str, Any]] = []
    load: dict[str, Any] = {}
    # The engine steps in this (the main) thread, as `slmops serve` runs it (see EngineWorker);
    # uvicorn and this benchmark's orchestration run on threads, the clients in processes.
    app = create_app(
        [ServedModel(MODEL_NAME, engine, backend=backend)],
        ServerOptions(max_waiting=256),
        step_in_caller=True,
    )
    server = BackgroundServer(app)
    errors: list[BaseException] = []

    def orchestrate() -> None:
        try:
            _run_clients(server.url, 1, 1, prompts)  # warm-up
            for c in clients:
                levels.append(_run_clients(server.url, c, requests, prompts))
                print(json.dumps({"backend": backend, **levels[-1]}), flush=True)
            if load_test:
                rss0 = _rss_bytes()
                ctx = mp.get_context("spawn")
                q = ctx.Queue()
                proc = ctx.Process(target=_load_test_client, args=(server.url, load_test, cases, 1, q))
                t0 = time.perf_counter()
                proc.start()
                failures = q.get()
                proc.join()
                rss1 = _rss_bytes()
                load.update(
                    requests=load_test,
                    seconds=time.perf_counter() - t0,
                    failures=len(failures),
                    first_failures=failures[:5],
                    rss_after_warmup=rss0,
                    rss_after=rss1,
                    rss_growth=rss1 / rss0 - 1,
                )
                print(json.dumps({"backend": backend, **load}), flush=True)
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)
        finally:
            server.close()  # its shutdown stops the engine's worker: app.state.drive returns

    thread = threading.Thread(target=orchestrate, name="bench-serve")
    thread.start()
    app.state.drive()
    thread.join()
    if errors:
        raise errors[0]
    offline += [_offline(engine, prompts[0]) for _ in range(2)]
    return {"backend": backend, "offline": statistics.median(offline), "levels": levels, "load_test": load}


def run(
    model_name: str, clients: list[int], requests: int, load_test: int, backends: list[str]
) -> dict[str, Any]:
    from slmops.engine import Engine

    from .engine import quantized_copy

    model, tok = slmops.zoo.load(model_name)
    qmodel, head = quantized_copy(model, "int4")
    rows = []
    prompts: list[list[int]] = []
    with tempfile.TemporaryDirectory() as work:
        for backend in backends:
            if backend == "native":
                engine: Any = Engine((qmodel, tok), head_format=head, max_batch=max(32, max(clients)))
            else:  # our onnx-genai export of the same weights, int8 activations as the native row
                from slmops.serve.genai import GenAIEngine

                folder = Path(work) / "genai"
                slmops.export_model(qmodel, "onnx-genai", folder, tok, accuracy_level=4)
                engine = GenAIEngine(folder, max_batch=max(32, max(clients)))
            rng = np.random.default_rng(0)
            prompts = prompts or [
                rng.integers(100, min(20000, engine.vocab), PROMPT_TOKENS).tolist() for _ in range(64)
            ]
            rows.append(_serve_and_load(engine, backend, clients, requests, load_test, prompts))
            del engine
    return {"model": model_name, "format": "int4", "threads": slmops.get_num_threads(), "backends": rows}


def checks(row: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(what, measured, target, met) per target, for one backend's row."""
    by = {lv["clients"]: lv for lv in row["levels"]}
    out = []
    if 1 in by:
        out.append(("1 client / offline", by[1]["tokens_per_s"] / row["offline"], 0.9, True))
    if 1 in by and 16 in by:
        out.append(("16 clients / 1 client", by[16]["tokens_per_s"] / by[1]["tokens_per_s"], 3.0, True))
        out.append(("16 clients TTFT p99 (s)", by[16]["ttft_p99"], 2.0, False))
    out.append(("failed requests", sum(lv["failed"] for lv in row["levels"]), 0, False))
    if row["load_test"]:
        lt = row["load_test"]
        out.append(("load test failures", lt["failures"], 0, False))
        out.append(("load test RSS growth", lt["rss_growth"], 0.10, False))
    return [(what, v, t, v >= t if higher else v <= t) for what, v, t, higher in out]


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']} {result['format']}, {result['threads']} threads; offline = the same request "
        "on the backend directly, prompt to last token",
        "",
        "| backend | clients | requests | failed | requests/s | tokens/s | TTFT p50 | TTFT p99 | ITL p50 "
        "| ITL p99 | client CPU / token |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["backends"]:
        lines.append(f"| {row['backend']} | offline | | | | {row['offline']:.1f} | | | | | |")
        for lv in row["levels"]:
            ms = {k: lv[k] * 1e3 for k in ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99")}
            lines.append(
                f"| {row['backend']} | {lv['clients']} | {lv['requests']} | {lv['failed']} | "
                f"{lv['requests_per_s']:.2f} | {lv['tokens_per_s']:.1f} | {ms['ttft_p50']:.0f} ms | "
                f"{ms['ttft_p99']:.0f} ms | {ms['itl_p50']:.1f} ms | {ms['itl_p99']:.1f} ms | "
                f"{lv['client_cpu_per_token'] * 1e6:.0f} us |"
            )
    for row in result["backends"]:
        if row["load_test"]:
            lt = row["load_test"]
            lines += [
                "",
                f"Load test ({row['backend']}): {lt['requests']} requests in {lt['seconds']:.1f} s, "
                f"{lt['failures']} failures, RSS {lt['rss_after_warmup'] / 2**20:.0f} -> "
                f"{lt['rss_after'] / 2**20:.0f} MiB ({lt['rss_growth'] * 100:+.1f}%)",
            ]
    lines += ["", "| backend | target | measured | bound | met |", "|---|---|---:|---:|---|"]
    for row in result["backends"]:
        for what, v, t, met in checks(row):
            lines.append(f"| {row['backend']} | {what} | {v:.3g} | {t:g} | {'yes' if met else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="slmops bench serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="zoo name or model path")
    p.add_argument("--clients", default="1,4,16,32", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=2, help="requests per client at each level")
    p.add_argument("--load-test", type=int, default=0, metavar="N", help="then N mixed requests (0: none)")
    p.add_argument("--threads", type=int, help="engine threads (default: OpenMP's)")
    p.add_argument(
        "--backends", default="native,onnx-genai", help="native, onnx-genai (our export of the same weights)"
    )
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    try:
        clients = [int(c) for c in args.clients.split(",") if c]
    except ValueError:
        p.error("--clients takes comma-separated integers")
    if not clients or min(clients) < 1 or args.requests < 1 or args.load_test < 0:
        p.error("--clients and --requests must be >= 1, --load-test >= 0")
    backends = [b for b in args.backends.split(",") if b]
    if not backends or set(backends) - {"native", "onnx-genai"}:
        p.error("--backends takes native and/or onnx-genai")
    if "onnx-genai" in backends and importlib.util.find_spec("onnxruntime_genai") is None:
        p.error("the onnx-genai backend needs onnxruntime-genai: pip install onnxruntime-genai")
    if args.threads:
        slmops.set_num_threads(args.threads)
    result = run(args.model, clients, args.requests, args.load_test, backends)
    write_report(result, markdown(result), args.json, args.markdown)
    return 0
