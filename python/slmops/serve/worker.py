"""The server's requests join an engine's continuous batching.

An engine is not thread-safe, so one thread steps it: request handlers (on the event loop)
hand jobs over a queue, the stepping thread admits them between steps, runs ``step()``
while anything is running, and hands each job its tokens through a callback (which the
server turns into a thread-safe put on the job's asyncio queue). That thread is the
worker's own, or the caller of :func:`drive` (``slmops serve``: the main thread).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import Engine, SamplingOptions
from .genai import GenAIEngine

log = logging.getLogger("slmops.serve")


class QueueFull(Exception):
    """More requests are waiting than the server takes (answered 429)."""


class WorkerStopped(Exception):
    """The worker takes no more requests: shutting down, or failed (answered 503)."""


@dataclass
class Job:
    """A request for the worker. ``deliver`` is called from the stepping thread with
    ``("tokens", [ids], [TokenLogprob] or None)`` as tokens come, then once with
    ``("done", finish_reason)``, ``("error", exception)`` (the engine refused the request) or
    ``("failed", exception)`` (the server failed it)."""

    prompt: np.ndarray
    max_new_tokens: int
    sampling: SamplingOptions
    deliver: Callable[[tuple[str, Any]], None]
    stop_token_ids: list[int] | None = None
    logprobs: int | None = None  # alternatives per token; the tokens' events then carry TokenLogprobs
    request: Any = field(default=None, repr=False)  # the engine's Request once admitted
    cancelled: bool = False


@dataclass
class WorkerStats:
    """What the metrics read after each step (written by the worker thread only)."""

    running: int = 0
    waiting: int = 0
    cache_usage: float = 0.0
    steps: int = 0


class EngineWorker:
    """Runs ``engine`` for the server. ``max_waiting``: jobs queued beyond the running batch
    before :meth:`submit` raises :class:`QueueFull`. ``on_step`` is called on the stepping
    thread with the stats (for gauges) after every step and every batch of submissions and
    cancellations.

    ``thread=True`` steps the engine on a thread of its own. ``thread=False`` leaves that to
    :func:`drive`, called from the thread that should run the kernels: OpenMP keeps one
    thread pool per calling thread, and a second pool (the main thread's from loading the
    model, plus the worker's) makes libgomp throttle its spin-waits when the pools hold more
    threads than there are cores, so every parallel region pays a futex wake (SmolLM2 int4,
    2 cores: 60 tok/s stepped from a second thread against 165 from the main one)."""

    def __init__(
        self,
        engine: Engine | GenAIEngine,
        *,
        max_waiting: int = 64,
        on_step: Callable[[WorkerStats], None] | None = None,
        name: str = "slmops-engine",
        thread: bool = True,
        wake: threading.Event | None = None,
    ) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self.stats = WorkerStats()
        self._on_step = on_step
        self._inbox: queue.SimpleQueue[tuple[str, Job | None]] = queue.SimpleQueue()
        self._wake = wake or threading.Event()  # set on every message: the stepping loop sleeps on it
        self._lock = threading.Lock()  # guards _queued
        self._queued = 0  # submitted, not yet admitted to the batch
        self._jobs: dict[int, Job] = {}  # id(engine Request) -> job
        self._stopping = False
        self._failure: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = (
            threading.Thread(target=drive, args=([self],), name=name, daemon=True) if thread else None
        )
        if self._thread is not None:
            self._thread.start()

    # -- called from any thread --------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._lock:
            if self._stopping:
                raise WorkerStopped("failed" if self._failure is not None else "shutting down")
            if self._queued >= self.max_waiting:
                raise QueueFull(f"{self._queued} requests are already waiting")
            self._queued += 1
        self._post("submit", job)

    def cancel(self, job: Job) -> None:
        """Drops a job wherever it is; its sequence is freed before the next step."""
        job.cancelled = True
        self._post("cancel", job)

    def stop(self, timeout: float | None = None) -> None:
        """Cancels every job (each gets ``("done", "cancelled")``) and ends the stepping loop."""
        with self._lock:
            self._stopping = True
        self._post("stop", None)
        self._stopped.wait(timeout)

    @property
    def alive(self) -> bool:
        return not self._stopped.is_set() and (self._thread is None or self._thread.is_alive())

    def _post(self, kind: str, job: Job | None) -> None:
        self._inbox.put((kind, job))
        self._wake.set()

    # -- the stepping thread -----------------------------------------------------------------
    def _admit(self, job: Job) -> None:
        with self._lock:
            self._queued -= 1
        if job.cancelled:
            job.deliver(("done", "cancelled"))
            return
        try:
            req = self.engine.submit(
                job.prompt,
                max_new_tokens=job.max_new_tokens,
                stop_token_ids=job.stop_token_ids,
                sampling=job.sampling,
                logprobs=job.logprobs,
            )
        except Exception as e:  # a prompt the engine refuses: the handler answers 400
            job.deliver(("error", e))
            return
        job.request = req
        self._jobs[id(req)] = job

    def _drop(self, job: Job, notify: bool = True) -> None:
        if job.request is not None and self._jobs.pop(id(job.request), None) is not None:
            self.engine.cancel(job.request)
            if notify:
                job.deliver(("done", "cancelled"))

    def _drain(self) -> None:
        """Handles the inbox; finishes the worker when told to stop."""
        while True:
            try:
                kind, job = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "stop":
                self._finish()
                return
            assert job is not None
            if kind == "submit":
                self._admit(job)
            elif kind == "cancel":
                self._drop(job)

    def _unadmitted(self) -> list[Job]:
        """Empties the inbox; the jobs submitted that never reached the engine."""
        jobs = []
        while True:
            try:
                kind, job = self._inbox.get_nowait()
            except queue.Empty:
                return jobs
            if kind == "submit" and job is not None:
                jobs.append(job)

    def _finish(self) -> None:
        for job in list(self._jobs.values()):
            self._drop(job)
        for job in self._unadmitted():
            job.deliver(("done", "cancelled"))
        self._publish()
        self._stopped.set()

    def _step(self) -> None:
        try:
            produced = self.engine.step()
        except Exception as e:  # nothing should raise here; if it does, fail every job, not the thread
            log.exception("the engine's step failed")
            for job in list(self._jobs.values()):
                self._drop(job, notify=False)
                job.deliver(("failed", e))
            return
        for req, token in produced:  # one token a request a step
            job = self._jobs.get(id(req))
            if job is not None and not (req.finish_reason == "stop" and token in req.stop_ids):
                job.deliver(
                    ("tokens", [int(token)], req.logprobs_out[-1:] if req.logprobs is not None else None)
                )
        for req, _ in produced:
            if req.finish_reason is not None:
                job = self._jobs.pop(id(req), None)
                if job is not None:
                    job.deliver(("done", req.finish_reason))
        self.stats.steps += 1

    def _publish(self) -> None:
        self.stats.running = self.engine.running
        with self._lock:
            self.stats.waiting = self.engine.waiting + self._queued
        self.stats.cache_usage = self.engine.cache_usage
        if self._on_step is not None:
            self._on_step(self.stats)

    def _fail(self, error: Exception) -> None:
        """The stepping loop broke outside the engine's step (a bug): every job of this worker,
        admitted or queued, gets ``("failed", error)`` and the worker stops (``alive`` turns
        False, /ready answers 503, new requests :class:`WorkerStopped`); the loop goes on with
        the other workers."""
        log.exception("the engine worker failed; its requests are failed and it takes no more")
        with self._lock:
            self._stopping, self._failure = True, error
        jobs = [*self._jobs.values(), *self._unadmitted()]
        self._jobs.clear()
        for job in jobs:
            try:
                job.deliver(("failed", error))
            except Exception:  # one handler gone wrong must not keep the others waiting
                log.exception("could not tell a request that it failed")
        self._stopped.set()


def drive(workers: list[EngineWorker]) -> None:
    """Steps ``workers`` (made with ``thread=False`` and one shared ``wake`` event) in the
    calling thread until every one is stopped: each step of each busy engine in turn, and a
    sleep on the event when none is busy."""
    live = list(workers)
    wake = live[0]._wake
    if any(w._wake is not wake for w in live):
        raise ValueError("workers driven together must share one wake event")
    while live:
        wake.clear()  # before the inbox is read: a message posted after this wakes the wait below
        for w in list(live):
            if not _survives(w, w._drain) or w._stopped.is_set():
                live.remove(w)
        busy = [w for w in live if w._jobs]
        for w in busy:
            if not _survives(w, w._step):
                live.remove(w)
        for w in list(live):
            if not _survives(w, w._publish):
                live.remove(w)
        if live and not busy:
            wake.wait()


def _survives(worker: EngineWorker, part: Callable[[], None]) -> bool:
    """Runs one part of ``worker``'s turn; an exception fails that worker (False), so a bug
    there neither ends the stepping thread nor leaves requests waiting on it."""
    try:
        part()
    except Exception as e:
        worker._fail(e)
        return False
    return True
