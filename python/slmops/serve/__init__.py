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
import time
from typing import Any

from .app import ServedModel, ServerOptions, create_app


def run(
    app: Any, *, host: str = "127.0.0.1", port: int = 8080, grace: float = 30.0, log_level: str = "info"
) -> None:
    """Serves ``app`` with uvicorn until SIGINT or SIGTERM: then no new connections are
    taken, in-flight requests have ``grace`` seconds to finish, and the rest are cancelled.
    An app made with ``step_in_caller`` has its engines stepped in this thread (the main
    one, where the model was loaded) while uvicorn runs on another."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace)
    )
    drive = getattr(app.state, "drive", None)
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        if drive is not None:
            raise RuntimeError("an app made with step_in_caller=True is run from the main thread")
        server.run()
        return

    # uvicorn runs on a thread of its own (where it installs no signal handlers) and these
    # stop it: a drained shutdown exits 0, where uvicorn's own handlers would re-raise SIGTERM.
    def on_signal(signum: int, frame: Any) -> None:
        if server.should_exit and signum == signal.SIGINT:
            server.force_exit = True  # a second Ctrl-C: do not wait for in-flight requests
        server.should_exit = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    http = threading.Thread(target=server.run, name="slmops-http", daemon=True)
    http.start()
    try:
        if drive is not None:

            def stop_engines_when_http_ends() -> None:  # also when uvicorn fails to start
                http.join()
                for worker in app.state.workers.values():
                    worker.stop()

            threading.Thread(target=stop_engines_when_http_ends, daemon=True).start()
            drive()
        http.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise RuntimeError(f"the server did not start on {host}:{port} (see the log above)")


class BackgroundServer:
    """``app`` served by uvicorn on a thread, on a free loopback port (``url``), until
    :meth:`close` (or the end of a ``with`` block): for notebooks, tests and benchmarks."""

    def __init__(self, app: Any, *, grace: float = 5.0, log_level: str = "warning") -> None:
        import socket

        import uvicorn

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=grace)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="slmops-serve", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.01)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(60)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BackgroundServer", "ServedModel", "ServerOptions", "create_app", "run"]
