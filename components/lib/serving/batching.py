"""Dynamic batching: requests that arrive together share one model call, as TF Serving batches.

A model call costs a fixed part (running the graph at all) plus a part per image, so under
concurrent load one call for several images can answer more images per second than a call for
each. The batcher runs at most ``max_concurrent_batches`` model calls at once (TF Serving's
``num_batch_threads``: on a CPU, calls running side by side use the cores that one call's ops
leave idle); the requests that arrive while they run make up the next batch. A batch closes
when it holds ``max_batch_size`` instances, when the requests that the previous batch answered
are back (closed-loop clients send their next request as soon as they have an answer), or
``timeout_ms`` after its first request, whichever comes first. A lone client therefore never
waits for the window: its previous batch held one request.

No model call holds more than ``max_batch_size`` images, whatever one request carries: a larger
request is split into pieces of at most that many, which queue apart from the other requests
and are taken only when none of those waits, one piece in a model call at a time (the pieces of
several large requests in turn). Large requests thus use what the others leave and cannot make
them wait for more than one piece's call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from components.lib.serving.protocol import InvalidImageError


@dataclass(frozen=True)
class BatchingConfig:
    """TF Serving's knobs by other names: ``max_batch_size``, ``batch_timeout_micros``,
    ``num_batch_threads``."""

    enabled: bool = True
    max_batch_size: int = 32
    timeout_ms: float = 5.0
    max_concurrent_batches: int = 2

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.timeout_ms < 0 or self.max_concurrent_batches < 1:
            raise ValueError(
                "batching needs max_batch_size >= 1, timeout_ms >= 0 and "
                "max_concurrent_batches >= 1"
            )


DEFAULT_BATCHING = BatchingConfig()


class Outputs(Protocol):
    """A model's answer for a batch: one row per image in each array."""

    classes: Any
    probabilities: Any


PredictFunction = Callable[[list[bytes]], Outputs]


@dataclass
class _Request:
    """One piece of a client's request: ``images`` from index ``start`` of its instances. The
    pieces of one request share ``answer`` and ``rows`` (each piece's rows by its start)."""

    images: list[bytes]
    start: int = 0
    answer: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    rows: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    rest: list[bytes] = field(default_factory=list)  # the images of the pieces still to queue
    total: int = 0

    def answered(self, classes: Any, probabilities: Any) -> None:
        """This piece's rows; the answer once every piece has its rows."""
        self.rows[self.start] = (classes, probabilities)
        if sum(len(rows[0]) for rows in self.rows.values()) == self.total:
            ordered = [self.rows[start] for start in sorted(self.rows)]
            if len(ordered) == 1:
                result = ordered[0]
            else:
                result = tuple(np.concatenate([rows[i] for rows in ordered]) for i in (0, 1))
            if not self.answer.done():  # its client may have gone
                self.answer.set_result(result)

    def next_piece(self, size: int) -> _Request | None:
        """The next piece of the same request, if any is left and its client still waits."""
        if not self.rest or self.answer.done():
            return None
        images, rest = self.rest[:size], self.rest[size:]
        start = self.start + len(self.images)
        return _Request(images, start, self.answer, self.rows, rest, self.total)


class Batcher:
    """Runs ``predict`` (blocking; called in a worker thread) for the requests of one model.

    Without batching every request is its own call, and calls run concurrently.
    ``observe_batch`` is told the number of instances of every model call.
    """

    def __init__(
        self,
        predict: PredictFunction,
        config: BatchingConfig,
        observe_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._predict = predict
        self.config = config
        self._observe_batch = observe_batch
        self._queue: deque[_Request] = deque()
        self._large: deque[_Request] = deque()  # pieces of requests over max_batch_size
        self._large_running = False
        self._arrived = asyncio.Event()
        self._last_batch_requests = 1
        self._worker: asyncio.Task | None = None
        self._calls: set[asyncio.Task] = set()

    async def predict(self, images: list[bytes]) -> tuple[Any, Any]:
        """(classes, probabilities) of ``images``: rows of the model call(s) that included
        them, at most ``max_batch_size`` images in each."""
        size = self.config.max_batch_size
        if not self.config.enabled:
            classes, probabilities = [], []
            for start in range(0, len(images), size):
                piece = images[start : start + size]
                self._observe_batch(len(piece))
                try:
                    outputs = await asyncio.to_thread(self._predict, piece)
                except InvalidImageError as error:
                    raise InvalidImageError([start + i for i in error.indices]) from None
                classes.append(outputs.classes)
                probabilities.append(outputs.probabilities)
            if len(classes) == 1:
                return classes[0], probabilities[0]
            return np.concatenate(classes), np.concatenate(probabilities)
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="batcher")
        request = _Request(images[:size], rest=images[size:], total=len(images))
        (self._large if request.rest else self._queue).append(request)
        self._arrived.set()
        return await request.answer

    async def close(self) -> None:
        """Stop the worker; requests still queued get an error (a graceful shutdown has already
        waited for every request in flight)."""
        for task in [self._worker, *self._calls]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for queue in (self._queue, self._large):
            while queue:
                _fail(queue.popleft(), RuntimeError("the server is shutting down"))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.config.max_concurrent_batches)
        while True:
            await slots.acquire()
            while not (self._queue or (self._large and not self._large_running)):
                self._arrived.clear()
                await self._arrived.wait()
            if not self._queue:  # a piece of a large request: a call of its own
                self._large_running = True
                self._start(batch=[self._large.popleft()], slots=slots, large=True)
                continue
            batch = [self._queue.popleft()]
            size = len(batch[0].images)
            deadline = loop.time() + self.config.timeout_ms / 1000
            while size < self.config.max_batch_size:
                if not self._queue:
                    remaining = deadline - loop.time()
                    if len(batch) >= self._last_batch_requests or remaining <= 0:
                        break
                    self._arrived.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    continue
                if size + len(self._queue[0].images) > self.config.max_batch_size:
                    break  # the next request opens the next batch
                batch.append(self._queue.popleft())
                size += len(batch[-1].images)
            self._last_batch_requests = len(batch)
            self._start(batch, slots, large=False)

    def _start(self, batch: list[_Request], slots: asyncio.Semaphore, large: bool) -> None:
        call = asyncio.create_task(self._call(batch))
        self._calls.add(call)
        call.add_done_callback(lambda done: self._called(done, batch, slots, large))

    def _called(
        self, call: asyncio.Task, batch: list[_Request], slots: asyncio.Semaphore, large: bool
    ) -> None:
        """A model call ended: a large request's next piece, if any, queues behind the others."""
        self._calls.discard(call)
        if large:
            self._large_running = False
            piece = batch[0].next_piece(self.config.max_batch_size)
            if piece is not None:
                self._large.append(piece)
            self._arrived.set()
        slots.release()

    async def _call(self, batch: list[_Request]) -> None:
        images = [image for request in batch for image in request.images]
        self._observe_batch(len(images))
        try:
            outputs = await asyncio.to_thread(self._predict, images)
        except InvalidImageError as error:
            await self._fail_invalid(batch, set(error.indices))
            return
        except Exception as error:
            for request in batch:
                _fail(request, error)
            return
        start = 0
        for request in batch:
            end = start + len(request.images)
            request.answered(outputs.classes[start:end], outputs.probabilities[start:end])
            start = end

    async def _fail_invalid(self, batch: list[_Request], bad: set[int]) -> None:
        """Refuse the requests that hold an undecodable image, naming it by its index in that
        request, and predict the others again without them."""
        valid, start = [], 0
        for request in batch:
            own = [request.start + i for i in range(len(request.images)) if start + i in bad]
            start += len(request.images)
            if own:
                _fail(request, InvalidImageError(own))
            else:
                valid.append(request)
        if valid:
            await self._call(valid)


def _fail(request: _Request, error: BaseException) -> None:
    if not request.answer.done():
        request.answer.set_exception(error)
