"""A batched worker: many sessions call one model; calls are merged into batches.

Callers `await worker(item)`. The worker collects items until the batch is full or no more
can come, runs `fn(batch)` in a thread of its own (so the event loop keeps scheduling other sessions),
and hands each caller its own result. One batch runs at a time per worker, which bounds
memory; errors reach exactly the callers of that batch.

"No more can come": with a Crowd (the runner's count of sessions in flight and of those
waiting on some model), as soon as every session in flight waits on a model, or after
`max_wait` seconds at most. Without one, when the queue has been idle for `max_wait` seconds
(a timer alone splits a crowd whose sessions arrive a few milliseconds apart).

Workers whose models share this machine's cores take a Turn: one batch at a time among them, and a
worker gathers its batch only once it holds the turn. Two roles running at once on the same cores
are no faster than one after the other, and split the sessions into cohorts that never meet again
(measured: mean batches of 6 of 32 sessions); while one role runs, the others' queues fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel


class WorkerStats(BaseModel):
    calls: int = 0  # items served
    batches: int = 0
    busy_seconds: float = 0.0  # time inside fn

    @property
    def mean_batch(self) -> float:
        return self.calls / self.batches if self.batches else 0.0


class BusyClock:
    """Wall time during which at least one model call is running, over every worker it is given to.
    Summing each worker's busy time would count twice the moments when two roles run at once."""

    def __init__(self):
        self.seconds = 0.0
        self._active, self._since, self._lock = 0, 0.0, threading.Lock()

    def __enter__(self) -> BusyClock:
        with self._lock:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self.seconds += time.perf_counter() - self._since


class Turn:
    """One model batch at a time among the workers given it (an asyncio lock for each event loop:
    a runtime may serve several `asyncio.run`s, one after the other)."""

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None  # held, so that its id is never another loop's
        self._lock = asyncio.Lock()

    def lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._lock = loop, asyncio.Lock()  # an earlier loop's lock is of no use any more
        return self._lock


SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("refloop_session", default=None)


class Crowd:
    """The sessions in flight and the model calls they wait on, shared by a run's workers.

    The runner enters a session (`with crowd.session(id)`); a worker call made inside it parks
    the session until its result is set. When every session in flight is parked, no one else
    can join a batch, so a worker runs what it has at once instead of waiting on a timer."""

    def __init__(self):
        self.active = 0
        self.parked: Counter[str] = Counter()  # session -> its model calls not answered yet

    @contextlib.contextmanager
    def session(self, session_id: str):
        """One session in flight; the worker calls made inside it are counted as its own."""
        self.active += 1
        token = SESSION.set(session_id)
        try:
            yield
        finally:
            self.active -= 1
            SESSION.reset(token)

    @contextlib.contextmanager
    def away(self):
        """A session in flight that will not call a model for a while (a person reviewing it)."""
        self.active -= 1
        try:
            yield
        finally:
            self.active += 1

    def everyone_parked(self) -> bool:
        return len(self.parked) >= self.active

    def park(self, session_id: str | None) -> None:
        if session_id is not None:
            self.parked[session_id] += 1

    def unpark(self, session_id: str | None) -> None:
        if session_id is not None:
            self.parked[session_id] -= 1
            if self.parked[session_id] <= 0:
                del self.parked[session_id]


class BatchedWorker:
    def __init__(self, name: str, fn: Callable[[list[Any]], Sequence[Any]], max_batch: int = 32,
                 max_wait: float | None = None, clock: BusyClock | None = None, crowd: Crowd | None = None,
                 turn: Turn | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.name, self.fn, self.max_batch = name, fn, max_batch
        # with a crowd, a cap on the wait since the batch began to gather (the turn held); without, the
        # idle window. 0.05 s split 32 sessions whose store and checkpoint writes take longer (bench --perf)
        self.max_wait = max_wait if max_wait is not None else (0.25 if crowd is not None else 0.005)
        self.stats = WorkerStats()
        self.clock = clock  # shared by the workers of a run, to time model calls as a whole
        self.crowd = crowd
        self.turn = turn
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._thread: ThreadPoolExecutor | None = None  # the model's own: never queued behind sessions' file I/O

    async def __call__(self, item: Any) -> Any:
        if self._task is None or self._task.done():
            self._thread = self._thread or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{self.name}")
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._serve(), name=f"worker-{self.name}")
        future = asyncio.get_running_loop().create_future()
        session = SESSION.get()
        if self.crowd is not None:
            self.crowd.park(session)
        await self._queue.put((item, future, session))
        return await future

    async def _collect(self, queue: asyncio.Queue, first: tuple) -> list[tuple]:
        batch = [first]
        if self.crowd is None:
            while len(batch) < self.max_batch:
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout=self.max_wait))
                except TimeoutError:
                    break  # idle: run what we have
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
            elif self.crowd.everyone_parked() or loop.time() >= deadline:
                break
            else:
                await asyncio.sleep(0.0005)  # a session in flight may still come: look again
        return batch

    async def _serve(self) -> None:
        queue = self._queue
        while True:
            first = await queue.get()
            async with self.turn.lock() if self.turn else contextlib.nullcontext():
                await self._run(await self._collect(queue, first))

    async def _run(self, batch: list[tuple]) -> None:
        items, futures = [b[0] for b in batch], [b[1] for b in batch]
        t0 = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._thread, self._timed, items)
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} inputs")
        except Exception as e:  # noqa: BLE001 - handed to the callers of this batch
            for f in futures:
                if not f.done():
                    f.set_exception(e)
            return
        finally:
            self.stats.busy_seconds += time.perf_counter() - t0
            self.stats.batches += 1
            self.stats.calls += len(items)
            if self.crowd is not None:
                for b in batch:
                    self.crowd.unpark(b[2])
        for f, r in zip(futures, results):
            if not f.done():
                f.set_result(r)

    def _timed(self, items: list[Any]) -> Sequence[Any]:
        if self.clock is None:
            return self.fn(items)
        with self.clock:
            return self.fn(items)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._thread is not None:
            self._thread.shutdown()
            self._thread = None
