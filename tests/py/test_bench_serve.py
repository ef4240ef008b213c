"""slmops bench serve's load client: what it reads from a live server equals the engine's
offline greedy answer, one arrival time per token, and a server that is not there counts
as failed requests rather than a lost client."""

import queue
import socket

import numpy as np
import pytest

pytest.importorskip("uvicorn")
from slmops.bench import serve as bench  # noqa: E402
from slmops.engine import Engine, SamplingOptions  # noqa: E402
from slmops.serve import BackgroundServer, ServedModel, ServerOptions, create_app  # noqa: E402


@pytest.fixture(scope="module")
def engine():
    return Engine("kjv-teacher", max_batch=4)


def _prompts(engine, n):
    rng = np.random.default_rng(0)
    return [rng.integers(100, engine.vocab, 12).tolist() for _ in range(n)]


def test_streamed_completion_equals_offline_greedy(engine):
    prompt = _prompts(engine, 1)[0]
    ref = engine.generate(prompt, max_new_tokens=16, sampling=SamplingOptions(), stop_token_ids=[])
    app = create_app([ServedModel(bench.MODEL_NAME, Engine("kjv-teacher", max_batch=4))], ServerOptions())
    with BackgroundServer(app) as server:
        body = {"model": bench.MODEL_NAME, "prompt": prompt, "max_tokens": 16, "temperature": 0,
                "stream": True, "ignore_eos": True}  # fmt: skip
        got = bench._stream_one(server.url, body)
    assert got["ok"] and got["text"] == ref.text
    times = got["times"]
    assert 0 < len(times) <= 16 and times == sorted(times) and times[0] > got["start"]


def test_clients_against_no_server_fail_their_requests(engine):
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    out: queue.Queue = queue.Queue()
    bench._load_client(url, 3, 2, _prompts(engine, 6), out)
    got = out.get(timeout=60)
    assert len(got["results"]) == 6 and not any(r["ok"] for r in got["results"])
