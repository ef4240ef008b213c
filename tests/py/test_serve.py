"""slmops serve under the real OpenAI client, on a loopback port: every answer is checked
against the engine's offline generation of the same prompt (greedy), the errors against
OpenAI's shape and status codes, the metrics against the requests made."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from slmops.engine import Engine, SamplingOptions  # noqa: E402
from slmops.serve import BackgroundServer, ServedModel, ServerOptions, create_app  # noqa: E402

KEY = "test-key"
MODEL = "teacher"
GREEDY = SamplingOptions()


@pytest.fixture(scope="module")
def reference():
    """The offline engine the answers must equal."""
    return Engine("kjv-teacher", max_batch=16)


@pytest.fixture(scope="module")
def server():
    app = create_app([ServedModel(MODEL, Engine("kjv-teacher", max_batch=16))], ServerOptions(api_key=KEY))
    s = BackgroundServer(app)
    yield s
    s.close()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def offline(reference, prompt, max_new_tokens):
    return reference.generate(prompt, max_new_tokens=max_new_tokens, sampling=GREEDY)


def metric_samples(server):
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# -- answers -------------------------------------------------------------------------------
def test_chat_completion_equals_the_engines_greedy_reply(client, reference):
    messages = [{"role": "user", "content": "Who begat Enos?"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=24)
    ref = offline(reference, reference.chat_prompt(messages), 24)
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ref.finish_reason
    assert r.usage.prompt_tokens == len(ref.prompt_tokens)
    assert r.usage.completion_tokens == len(ref.tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.object == "chat.completion" and r.model == MODEL


def test_streamed_chat_joins_to_the_whole_reply_and_ends_with_usage(client, reference):
    messages = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "What is light?"}]
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            temperature=0,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    ref = offline(reference, reference.chat_prompt(messages), 30)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref.text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [ref.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref.tokens)
    assert len({c.id for c in chunks}) == 1


def test_completion_and_its_stream_equal_the_engines_greedy_text(client, reference):
    prompt = "In the beginning God created"
    ref = offline(reference, prompt, 12)
    r = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12)
    assert r.choices[0].text == ref.text and r.object == "text_completion"
    streamed = client.completions.create(
        model=MODEL, prompt=prompt, temperature=0, max_tokens=12, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == ref.text
    echo = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12, echo=True)
    assert echo.choices[0].text == prompt + ref.text


def test_stop_strings_cut_the_reply_before_them(client, reference):
    prompt = "In the beginning God created"
    full = offline(reference, prompt, 24).text
    stop = full.split()[2]  # a word from the middle of the reply
    for stream in (False, True):
        r = client.completions.create(
            model=MODEL, prompt=prompt, temperature=0, max_tokens=24, stop=[stop], stream=stream
        )
        text = "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
        assert text == full[: full.index(stop)]


def test_seeded_sampling_repeats(client):
    kw = dict(model=MODEL, prompt="And the LORD said", max_tokens=16, temperature=1.2, top_p=0.9)
    a = client.completions.create(seed=7, **kw).choices[0].text
    assert a == client.completions.create(seed=7, **kw).choices[0].text
    assert a != client.completions.create(seed=8, **kw).choices[0].text


def log_softmax(z):
    z = z.astype(np.float64)
    return z - (
        z.max(-1, keepdims=True) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    )


def test_logprobs_are_the_models_log_softmax_in_both_shapes(client, reference):
    messages = [{"role": "user", "content": "Who begat Enos?"}]
    kw = dict(model=MODEL, messages=messages, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    r = client.chat.completions.create(**kw)
    prompt = reference.chat_prompt(messages)
    ref = offline(reference, prompt, 8)
    lsm = log_softmax(reference.logits(list(prompt) + ref.tokens))[len(prompt) - 1 :]
    content = r.choices[0].logprobs.content
    assert [e.token for e in content] == [reference.tokenizer.decode([t]) for t in ref.tokens]
    for e, token, row in zip(content, ref.tokens, lsm, strict=False):
        top = np.argsort(-row, kind="stable")[:3]
        assert abs(e.logprob - row[token]) < 2e-2  # the server decoded step by step, the reference at once
        np.testing.assert_allclose([t.logprob for t in e.top_logprobs], row[top], atol=2e-2)
        assert e.top_logprobs[0].logprob == e.logprob  # greedy: the chosen token is the top one
        assert e.bytes == list(e.token.encode())
    streamed = client.chat.completions.create(stream=True, **kw)
    chunk_entries = [
        e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert [(e.token, e.logprob) for e in chunk_entries] == [(e.token, e.logprob) for e in content]
    legacy = client.completions.create(
        model=MODEL, prompt="In the beginning", max_tokens=5, temperature=0, logprobs=2
    )
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert all(
        len(alt) == 2 and max(alt.values()) == v
        for alt, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )
    assert lp.text_offset == list(np.cumsum([0] + [len(t) for t in lp.tokens])[:-1])
    assert (
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2).choices[0].logprobs
        is None
    )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=messages, top_logprobs=2)  # without logprobs


def test_models_health_and_ready(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # no key needed
    ready = httpx.get(server.url + "/ready", headers={"Authorization": f"Bearer {KEY}"})
    assert ready.status_code == 200 and ready.json()["models"] == [MODEL]


def test_sixteen_concurrent_streams_each_get_their_offline_answer(server, reference):
    prompts = [
        f"And the {w} said unto" for w in "LORD king man woman servant prophet people angel".split()
    ] * 2
    prompts = [p + " " * (i // 8) for i, p in enumerate(prompts)]  # 16 distinct prompts
    refs = reference.generate_batch(prompts, max_new_tokens=20, sampling=GREEDY)

    async def one(c, prompt):
        stream = await c.completions.create(
            model=MODEL, prompt=prompt, temperature=0, max_tokens=20, stream=True
        )
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def all_of_them():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as c:
            return await asyncio.gather(*(one(c, p) for p in prompts))

    assert asyncio.run(all_of_them()) == [r.text for r in refs]


# -- errors --------------------------------------------------------------------------------
def error_of(response):
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_bad_requests_get_openai_errors_with_4xx(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", temperature="hot")
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="In the beginning " * 400)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=[10**9])  # a token id outside the vocabulary
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers=auth)
    assert r.status_code == 400 and error_of(r)["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/completions", content=b"[1, 2]", headers=auth)
    assert r.status_code == 400
    r = httpx.post(server.url + "/v1/completions", content=b"x" * (2 << 20), headers=auth)
    assert r.status_code == 413 and error_of(r)
    r = httpx.get(server.url + "/v1/nothing", headers=auth)
    assert r.status_code == 404 and error_of(r)
    r = httpx.get(server.url + "/v1/chat/completions", headers=auth)
    assert r.status_code == 405 and error_of(r)
    # A long reply is capped by the context, not refused.
    r = client.completions.create(model=MODEL, prompt="And", max_tokens=100000, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_every_endpoint_but_health_needs_the_key(server):
    for path in ("/v1/models", "/ready", "/metrics"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = httpx.get(server.url + path, headers=headers)
            assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key", (path, headers)
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model=MODEL, prompt="x")


def test_a_full_queue_answers_429_with_retry_after():
    app = create_app([ServedModel(MODEL, Engine("kjv-teacher"))], ServerOptions(max_waiting=0))
    s = BackgroundServer(app)
    try:
        r = httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "And"})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert error_of(r)["type"] == "rate_limit_error"
    finally:
        s.close()


def test_a_failure_outside_the_step_fails_that_workers_requests_and_stops_it(reference):
    """A bug in the stepping loop (here: the stats callback raising after 3 steps) must fail
    the worker's in-flight and queued requests, not leave them waiting on a dead thread, and
    the other worker driven by the same thread must go on serving."""
    import queue
    import threading

    from slmops.serve.worker import EngineWorker, Job, WorkerStopped, drive

    def broken(stats):
        if stats.steps >= 3:
            raise RuntimeError("stats callback broke")

    wake = threading.Event()
    bad = EngineWorker(Engine("kjv-teacher"), on_step=broken, thread=False, wake=wake)
    good = EngineWorker(Engine("kjv-teacher"), thread=False, wake=wake)
    stepper = threading.Thread(target=drive, args=([bad, good],), daemon=True)
    stepper.start()
    prompt = np.array([5, 17, 33, 101], dtype=np.int64)
    inboxes = {name: queue.SimpleQueue() for name in ("bad", "queued", "good")}
    jobs = {name: Job(prompt, 12, GREEDY, inbox.put, stop_token_ids=[]) for name, inbox in inboxes.items()}
    bad.submit(jobs["bad"])
    bad.submit(jobs["queued"])
    good.submit(jobs["good"])

    def events(name):
        out = []
        while not out or out[-1][0] == "tokens":
            out.append(inboxes[name].get(timeout=30))
        return out

    for name in ("bad", "queued"):
        *tokens, last = events(name)
        assert last[0] == "failed" and "stats callback broke" in str(last[1])
        assert len(tokens) <= 3
    good_events = events("good")
    assert good_events[-1] == ("done", "length")
    expected = reference.generate(prompt, max_new_tokens=12, sampling=GREEDY, stop_token_ids=[])
    assert [t for e in good_events[:-1] for t in e[1]] == expected.tokens
    assert not bad.alive and good.alive
    with pytest.raises(WorkerStopped, match="failed"):
        bad.submit(Job(prompt, 4, GREEDY, lambda e: None))
    good.stop(timeout=10)
    stepper.join(timeout=10)
    assert not stepper.is_alive()


def test_a_failed_worker_answers_500_then_503_and_is_not_ready():
    engine = Engine("kjv-teacher")
    app = create_app([ServedModel(MODEL, engine)], ServerOptions())
    worker = app.state.workers[MODEL]
    s = BackgroundServer(app)
    try:
        publish = worker._publish

        def publish_then_break():
            publish()
            if worker.stats.steps >= 2:
                raise RuntimeError("stats broke")

        worker._publish = publish_then_break
        body = {"model": MODEL, "prompt": "And the LORD spake", "max_tokens": 50, "temperature": 0}
        r = httpx.post(s.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 500 and error_of(r)["type"] == "server_error"
        assert "stats broke" in error_of(r)["message"]
        assert httpx.get(s.url + "/ready").status_code == 503
        r = httpx.post(s.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 503 and error_of(r)["type"] == "unavailable_error"
    finally:
        s.close()


# -- metrics and disconnects ---------------------------------------------------------------
def test_metrics_count_the_requests_and_tokens(client, server):
    def value(samples, name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    before = metric_samples(server)
    used = 0
    for i in range(3):
        r = client.completions.create(
            model=MODEL, prompt=f"And it came to pass {i}", max_tokens=5, temperature=0
        )
        used += r.usage.completion_tokens
    after = metric_samples(server)
    endpoint = {"endpoint": "/v1/completions", "status": "200"}
    assert (
        value(after, "slmops_http_requests_total", **endpoint)
        - value(before, "slmops_http_requests_total", **endpoint)
        == 3
    )
    gen = "slmops_generation_tokens_total"
    assert value(after, gen, model=MODEL) - value(before, gen, model=MODEL) == used
    ttft = "slmops_time_to_first_token_seconds_count"
    assert value(after, ttft, model=MODEL) - value(before, ttft, model=MODEL) == 3
    assert (
        value(
            after,
            "slmops_model_info",
            model=MODEL,
            backend="native",
            max_context="512",
            max_batch="16",
            kv_cache_bytes=str(256 << 20),
        )
        == 1
    )
    assert 0.0 <= value(after, "slmops_kv_cache_usage_ratio", model=MODEL) <= 1.0


def test_a_client_gone_mid_stream_frees_its_sequence(client, server):
    aborted = ("slmops_request_success_total", (("finished_reason", "abort"), ("model", MODEL)))
    before = metric_samples(server).get(aborted, 0.0)
    body = {
        "model": MODEL,
        "prompt": "And the LORD spake",
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream(
        "POST", server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    # The connection is closed: the worker drops the sequence at its next step.
    deadline = time.time() + 10
    while metric_samples(server).get(("slmops_requests_running", (("model", MODEL),))) != 0:
        assert time.time() < deadline, "the abandoned request is still running"
        time.sleep(0.05)
    assert metric_samples(server)[aborted] == before + 1
    assert client.completions.create(model=MODEL, prompt="And", max_tokens=3, temperature=0).choices[0].text


def test_sigterm_lets_an_open_stream_finish_and_exits_0(tmp_path, reference):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SLMOPS_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "slmops.cli", "serve", "kjv-teacher", "--port", str(port), "--grace", "20"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "the server did not come up"
            time.sleep(0.2)
        body = {
            "model": "kjv-teacher",
            "prompt": "In the beginning",
            "max_tokens": 64,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream(
            "POST", url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        ) as r:
            lines = r.iter_lines()
            first = next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        events = [first, *rest]
        assert events[-1] == "data: [DONE]"
        text = "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1])
        assert text == offline(reference, "In the beginning", 64).text
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_served_names_must_differ_and_exist():
    e = Engine("kjv-teacher")
    with pytest.raises(ValueError, match="differ"):
        create_app([ServedModel("a", e), ServedModel("a", e)])
    with pytest.raises(ValueError, match="at least one"):
        create_app([])


# -- the deployment files ------------------------------------------------------------------
def test_container_export_writes_a_build_context_and_kubernetes_objects(tmp_path):
    import yaml
    from slmops.export import export

    out = tmp_path / "ctx"
    manifest = export("kjv-teacher", "container", out, name="KJV Teacher", port=9000)
    files = {f["path"] for f in manifest["files"]}
    assert {"Dockerfile", "k8s.yaml", "model/config.json"} <= files
    docker = (out / "Dockerfile").read_text()
    assert "COPY model /model" in docker and "EXPOSE 9000" in docker
    entry = json.loads(
        next(line for line in docker.splitlines() if line.startswith("ENTRYPOINT"))[len("ENTRYPOINT ") :]
    )
    assert entry[:3] == ["slmops", "serve", "/model"] and entry[entry.index("--port") + 1] == "9000"
    assert entry[entry.index("--served-name") + 1] == "KJV Teacher"
    deployment, service = yaml.safe_load_all((out / "k8s.yaml").read_text())
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "slmops-kjv-teacher"
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 9000}]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "/ready" in container["readinessProbe"]["exec"]["command"][-1]
    for meta in (pod["metadata"], service["metadata"]):
        assert meta["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9000",
            "prometheus.io/path": "/metrics",
        }
    assert (
        deployment["spec"]["selector"]["matchLabels"]
        == pod["metadata"]["labels"]
        == service["spec"]["selector"]
    )
    # The checkpoint in the context is what slmops serve loads.
    assert Engine(str(out / "model")).generate("In the beginning", max_new_tokens=4).tokens
    with pytest.raises(ValueError, match="port"):
        export("kjv-teacher", "container", tmp_path / "bad", port=70000)
    assert not (tmp_path / "bad").exists()


def test_the_readiness_probe_command_reaches_ready_with_the_key(server):
    import yaml
    from slmops.export.container import kubernetes

    port = server.url.rsplit(":", 1)[1]
    deployment, _ = kubernetes("x", int(port), 1 << 30)
    command = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    assert yaml.safe_load(yaml.safe_dump(command)) == command
    ok = subprocess.run([sys.executable, *command[1:]], env={**os.environ, "SLMOPS_API_KEY": KEY}, timeout=30)
    bad = subprocess.run(
        [sys.executable, *command[1:]],
        env={**os.environ, "SLMOPS_API_KEY": "no"},
        capture_output=True,
        timeout=30,
    )
    assert ok.returncode == 0 and bad.returncode != 0


# -- the onnx-genai backend ----------------------------------------------------------------
@pytest.fixture(scope="module")
def genai_folder(tmp_path_factory):
    pytest.importorskip("onnxruntime_genai")
    import slmops

    model, tok = slmops.zoo.load("kjv-teacher")
    slmops.quantize_model(model, "rtn", format="int4", progress=False)
    out = tmp_path_factory.mktemp("genai") / "teacher-int4"
    slmops.export_model(model, "onnx-genai", out, tok, accuracy_level=1)
    return out


def test_an_onnx_genai_folder_serves_what_onnxruntime_genai_generates(genai_folder):
    import onnxruntime_genai as og
    from slmops.serve.genai import GenAIEngine

    og_model = og.Model(str(genai_folder))
    engine = GenAIEngine(genai_folder, max_batch=4)

    def direct(ids, new):
        params = og.GeneratorParams(og_model)
        params.set_search_options(max_length=len(ids) + new, do_sample=False)
        gen = og.Generator(og_model, params)
        gen.append_tokens(np.asarray(ids, np.int32)[None])
        out = []
        while not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        eos = engine._eos
        return engine.tokenizer.decode([t for t in out if t not in eos], skip_special_tokens=True)

    prompts = ["In the beginning God created", "And the LORD said unto Moses", "Blessed are the meek"]
    messages = [{"role": "user", "content": "Who begat Enos?"}]
    want = [direct(engine.encode(p), 12) for p in prompts]
    want_chat = direct(engine.chat_prompt(messages), 12)
    app = create_app([ServedModel("genai", engine, backend="onnx-genai")], ServerOptions())
    with BackgroundServer(app) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)

        async def together():
            async with openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0) as ac:
                rs = await asyncio.gather(
                    *(
                        ac.completions.create(model="genai", prompt=p, max_tokens=12, temperature=0)
                        for p in prompts
                    )
                )
                return [r.choices[0].text for r in rs]

        assert asyncio.run(together()) == want  # interleaved, each as onnxruntime-genai alone
        chat = c.chat.completions.create(model="genai", messages=messages, max_tokens=12, temperature=0)
        assert chat.choices[0].message.content == want_chat
        stream = c.completions.create(
            model="genai", prompt=prompts[0], max_tokens=12, temperature=0, stream=True
        )
        assert "".join(ch.choices[0].text for ch in stream) == want[0]
        with pytest.raises(openai.BadRequestError, match="onnx-genai"):
            c.completions.create(model="genai", prompt="x", logprobs=1)
        with pytest.raises(openai.BadRequestError, match="presence_penalty"):
            c.completions.create(model="genai", prompt="x", presence_penalty=0.5)
        info = {f.name: f for f in text_string_to_metric_families(httpx.get(s.url + "/metrics").text)}
        assert info["slmops_model_info"].samples[0].labels["backend"] == "onnx-genai"


def test_serve_refuses_a_backend_or_format_the_model_cannot_take(genai_folder, capsys):
    from slmops.cli import main

    assert main(["serve", str(genai_folder), "--format", "q4_0"]) == 2
    assert "ONNX Runtime GenAI folder" in capsys.readouterr().err
    assert main(["serve", "kjv-teacher", "--backend", "onnx-genai"]) == 2
    assert main(["serve", str(genai_folder), "--backend", "native"]) == 2
