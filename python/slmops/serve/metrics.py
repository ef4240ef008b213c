"""The server's Prometheus metrics, in a registry of its own (one per app).

Named after vLLM's ``vllm:`` family with an ``slmops_`` prefix (Prometheus reserves colons
for recording rules): request counts by endpoint and status, running and waiting requests,
prompt and generated tokens, time to first token, inter-token and end-to-end latency
(vLLM's bucket lists), KV-cache usage and the served models' settings.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
E2E_BUCKETS = (
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
    120.0,
    240.0,
    480.0,
)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "slmops_http_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.running = Gauge(
            "slmops_requests_running", "requests in the engine's batch", ["model"], registry=r
        )
        self.waiting = Gauge(
            "slmops_requests_waiting", "requests queued for the batch", ["model"], registry=r
        )
        self.prompt_tokens = Counter("slmops_prompt_tokens", "prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter(
            "slmops_generation_tokens", "tokens generated", ["model"], registry=r
        )
        self.finished = Counter(
            "slmops_request_success",
            "finished generations by reason",
            ["model", "finished_reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "slmops_time_to_first_token_seconds",
            "request arrival to its first token",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "slmops_inter_token_latency_seconds",
            "time between a request's consecutive tokens",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "slmops_e2e_request_latency_seconds",
            "request arrival to its last token",
            ["model"],
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.cache_usage = Gauge(
            "slmops_kv_cache_usage_ratio",
            "fraction of the KV cache's blocks in use (1 = full)",
            ["model"],
            registry=r,
        )
        self.model_info = Gauge(
            "slmops_model_info",
            "a served model's settings (value 1)",
            ["model", "backend", "max_context", "max_batch", "kv_cache_bytes"],
            registry=r,
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
