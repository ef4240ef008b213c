"""``slmops serve``: an OpenAI-compatible HTTP server with Prometheus metrics on the native engine.

    slmops serve smollm2-135m-instruct --format q4_0 --port 8080
    curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}'

or from Python (the ``openai`` client works against it unchanged)::

    from slmops.engine import Engine
    from slmops.serve import ServedModel, ServerOptions, create_app, run

    app = create_app([ServedModel("smol", Engine("smollm2-135m-instruct"))], ServerOptions(api_key="k"))
    run(app, port=8080)

Each model's engine runs on a worker thread of its own; requests join its continuous
batching between steps. Needs the ``serve`` extra: ``pip install 'slmops[serve]'``.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from .app import ServedModel, ServerOptions, create_app


def run(
    app: Any, *, host: str = "127.0.0.1", port: int = 8080, grace: float = 30.0, log_level: str = "info"
) -> None:
    """Serves ``app`` with uvicorn until SIGINT or SIGTERM: then no new connections are
    taken, in-flight requests have ``grace`` seconds to finish, and the rest are cancelled."""
    import uvicorn

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace)
        return
    # uvicorn drains on SIGTERM, then raises the signal again with the handler it found: a
    # handler that ignores it makes the drained shutdown exit 0 instead of dying by SIGTERM.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace)
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["ServedModel", "ServerOptions", "create_app", "run"]
