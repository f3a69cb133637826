"""Per-request bounds of the server: decoded pixels in flight, and requests whose client left.

An upload's cost is its header's width × height, known before a pixel is
decoded: a 90 KB PNG can claim 9,500 × 9,500 pixels. ``PixelBudget`` lets
requests decode and run only while the pixels they hold together stay under a
limit; the rest wait their turn (one image over the whole limit runs alone),
so peak memory follows the limit instead of the number of clients.
``run_while_connected`` drops a queued job, and stops a generating one, as
soon as its client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, AsyncIterator, Hashable

from slava.serve.batching import ModelWorker

DEFAULT_MAX_PIXELS_IN_FLIGHT = 64_000_000
"""Decoded pixels (header width × height) that all requests together may hold at once."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready; nothing is sent."""


class PixelBudget:
    """A counting limit on the pixels that requests hold between decoding and answering."""

    def __init__(self, limit: int = DEFAULT_MAX_PIXELS_IN_FLIGHT):
        if limit < 1:
            raise ValueError("the pixel budget must be at least 1")
        self.limit = limit
        self.in_flight = 0
        self.peak = 0
        self._cond: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Wait until ``pixels`` fit beside those in flight, hold them for the block, then give them back."""
        # An image over the whole limit would never fit: it waits for an empty budget and runs alone.
        pixels = max(1, min(int(pixels), self.limit))
        if self._cond is None:
            self._cond = asyncio.Condition()
        cond = self._cond
        async with cond:
            await cond.wait_for(lambda: self.in_flight + pixels <= self.limit)
            self.in_flight += pixels
            self.peak = max(self.peak, self.in_flight)
        try:
            yield
        finally:
            async with cond:
                self.in_flight -= pixels
                cond.notify_all()


async def _disconnected(receive) -> None:
    """Return once the ASGI server reports that the client went away (the body is already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_while_connected(receive, worker: ModelWorker, kind: str, payload: Any, key: Hashable = None,
                              cancel: threading.Event | None = None) -> Any:
    """``worker.run(kind, payload, key)``, abandoned when the client disconnects first.

    A job still queued is cancelled (the worker skips it); one already running
    sees ``cancel`` set, which generation checks between tokens. Raises
    ``ClientGone`` in that case.
    """
    future = worker.submit(kind, payload, key)
    answer = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not gone.done():
            gone.cancel()
    if answer.done():
        return answer.result()
    if cancel is not None:
        cancel.set()
    future.cancel()
    # The job may still finish on the worker; its result is dropped with the future.
    answer.add_done_callback(lambda f: f.cancelled() or f.exception())
    raise ClientGone()
