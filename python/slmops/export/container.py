"""The ``container`` target: a build context that serves the model with ``slmops serve``
(``Dockerfile``, the model as an slmops checkpoint in ``model/``) and ``k8s.yaml``, a
Kubernetes Deployment and Service with liveness and readiness probes and Prometheus scrape
annotations. Nothing here needs a container runtime; the files are for the user's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

MODEL_DIR = "model"  # in the build context, copied to /model in the image


def _dns_name(name: str) -> str:
    """A Kubernetes object name (RFC 1123 label) from a served model name."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:50] or "model"
    return f"slmops-{label}"


def dockerfile(served_name: str, port: int, slmops_version: str, torch_version: str) -> str:
    serve = [
        "slmops",
        "serve",
        "/model",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--served-name",
        served_name,
    ]
    entry = ", ".join(f'"{a}"' for a in serve)
    image = _dns_name(served_name)
    return f"""# slmops serve for the model in ./{MODEL_DIR} (written by slmops export --target container).
#   docker build -t {image} . && docker run -p {port}:{port} -e SLMOPS_API_KEY=... {image}
FROM python:3.11-slim
# torch's CPU build first (PyPI's default Linux wheel carries CUDA), then slmops with its server.
RUN pip install --no-cache-dir "torch=={torch_version}" --index-url https://download.pytorch.org/whl/cpu \\
 && pip install --no-cache-dir "slmops[serve]=={slmops_version}"
COPY {MODEL_DIR} /model
RUN useradd --system --uid 10001 slmops
USER 10001
EXPOSE {port}
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \\
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=3)"
# SIGTERM (docker stop, a rolling update) drains in-flight requests for --grace seconds, then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT [{entry}]
"""


# /ready is behind the API key when one is set, and an httpGet probe cannot read a Secret:
# the readiness probe is a small exec that sends the key from the container's environment.
_READY_PROBE = (
    "import os, urllib.request; k = os.environ.get('SLMOPS_API_KEY'); "
    "urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:{port}/ready', "
    "headers={{'Authorization': 'Bearer ' + k}} if k else {{}}), timeout=3)"
)


def kubernetes(served_name: str, port: int, memory_bytes: int) -> list[dict[str, Any]]:
    """A Deployment and a Service; ``memory_bytes``: the pod's memory request."""
    name = _dns_name(served_name)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "slmops"}
    scrape = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    mib = max(512, -(-memory_bytes // (1 << 20)))
    container = {
        "name": "serve",
        "image": f"{name}:latest",
        "ports": [{"name": "http", "containerPort": port}],
        "env": [
            {
                "name": "SLMOPS_API_KEY",  # optional: without the Secret the server takes no key
                "valueFrom": {
                    "secretKeyRef": {"name": f"{name}-api-key", "key": "api-key", "optional": True}
                },
            }
        ],
        "resources": {"requests": {"cpu": "2", "memory": f"{mib}Mi"}, "limits": {"memory": f"{2 * mib}Mi"}},
        "startupProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
        },
        "readinessProbe": {
            "exec": {"command": ["python", "-c", _READY_PROBE.format(port=port)]},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": scrape},
                # The server drains for 30 s on SIGTERM (slmops serve --grace): give it that and more.
                "spec": {"terminationGracePeriodSeconds": 45, "containers": [container]},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels, "annotations": scrape},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
    }
    return [deployment, service]


def write_container(tmp: Path, served_name: str, port: int, model_bytes: int) -> dict[str, Any]:
    """Writes Dockerfile and k8s.yaml into ``tmp`` (the model is in ``tmp / MODEL_DIR``)."""
    import torch

    from .. import __version__

    torch_version = torch.__version__.split("+")[0]
    (tmp / "Dockerfile").write_text(dockerfile(served_name, port, __version__, torch_version))
    (tmp / ".dockerignore").write_text("manifest.json\n")
    # Memory: the weights, the KV cache (256 MiB default) and the runtime's own.
    docs = kubernetes(served_name, port, model_bytes + (256 << 20) + (512 << 20))
    (tmp / "k8s.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return {"served_name": served_name, "port": port, "image": _dns_name(served_name)}
