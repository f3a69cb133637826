"""The single model worker: one thread owns the Assistant, a queue feeds it.

The model is neither thread-safe nor cheap to duplicate, and a forward pass
must never run on the event loop. So every model call becomes a ``Job`` on a
queue; one thread takes the oldest job plus every waiting job with the same
batch key (up to ``max_batch``) and hands them to the handler for that kind in
one call. Requests that arrive while a batch runs therefore form the next
batch on their own; nothing waits on a timer. Each job has its own future, so
callers on the event loop just ``await`` it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[Any]], Sequence[Any]]
"""Takes the payloads of one batch, returns one result per payload, in order; a
result that is an exception instance fails only that payload's request."""


class QueueFull(RuntimeError):
    """More requests are waiting than the worker accepts; the caller should retry later."""


@dataclass
class Job:
    """One model call waiting for the worker."""

    kind: str
    key: Hashable
    payload: Any
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class ModelWorker:
    """A thread that runs ``handlers[kind](payloads)`` for batches of compatible jobs.

    ``handlers`` maps a job kind to a batch handler. Jobs batch together when
    their kinds and keys are equal (the key carries whatever must match, e.g.
    the label set or the sampling settings). A batch that raises is retried
    job by job, so one bad input fails only its own request.
    """

    def __init__(self, handlers: dict[str, BatchHandler], max_batch: int = 8, max_waiting: int = 1024):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.handlers = dict(handlers)
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.batches_run = 0
        self.largest_batch = 0
        self.submitted = 0
        """Jobs accepted since the start."""
        self.dropped = 0
        """Jobs skipped because their caller cancelled them while they waited."""
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._held: deque[Job] = deque()
        self._waiting = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="slava-model-worker", daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the jobs already queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, kind: str, payload: Any, key: Hashable = None) -> concurrent.futures.Future:
        """Queue one job; raises ``QueueFull`` past ``max_waiting`` jobs in flight."""
        if kind not in self.handlers:
            raise KeyError(f"no handler for job kind {kind!r}")
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise QueueFull(f"{self._waiting} requests are already waiting for the model")
            self._waiting += 1
            self.submitted += 1
        job = Job(kind, (kind, key), payload)
        job.future.add_done_callback(self._done)
        self._queue.put(job)
        return job.future

    async def run(self, kind: str, payload: Any, key: Hashable = None) -> Any:
        """Submit a job and await its result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(kind, payload, key))

    @property
    def waiting(self) -> int:
        """Jobs submitted and not yet finished."""
        return self._waiting

    def _done(self, _future: concurrent.futures.Future) -> None:
        with self._lock:
            self._waiting -= 1

    def _next_batch(self) -> list[Job] | None:
        """The oldest job and the held jobs batchable with it; None once closed and drained."""
        if not self._held:
            job = self._queue.get()
            if job is None:
                return None
            self._held.append(job)
        stop = False
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            self._held.append(job)
        if stop:
            # Keep the sentinel behind the jobs taken, so they still run before the thread exits.
            self._queue.put(None)
        key = self._held[0].key
        batch = [j for j in self._held if j.key == key][: self.max_batch]
        taken = {id(j) for j in batch}
        self._held = deque(j for j in self._held if id(j) not in taken)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            # A job whose caller went away (cancelled future) is skipped, not computed.
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            self.dropped += len(batch) - len(live)
            batch = live
            if batch:
                self._execute(batch)

    def _execute(self, batch: list[Job]) -> None:
        handler = self.handlers[batch[0].kind]
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        try:
            results = list(handler([j.payload for j in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"handler returned {len(results)} results for {len(batch)} jobs")
        except Exception as exc:  # noqa: BLE001 - every failure must reach its caller, not kill the thread
            if len(batch) == 1:
                results = [exc]
            else:
                log.info("batch of %d %s jobs failed (%s); running them one by one", len(batch), batch[0].kind, exc)
                results = [_run_one(handler, j.payload) for j in batch]
        for job, result in zip(batch, results):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)


def _run_one(handler: BatchHandler, payload: Any) -> Any:
    """The result of ``payload`` alone, or the exception it raised."""
    try:
        return handler([payload])[0]
    except Exception as exc:  # noqa: BLE001
        return exc
