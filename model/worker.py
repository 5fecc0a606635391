"""A batched worker: many sessions call one model; calls are merged into batches.

Callers `await worker(item)`. The worker collects items until the batch is full or the
queue has been idle for `max_wait` seconds, runs `fn(batch)` in a thread (so the event
loop keeps scheduling other sessions), and hands each caller its own result. One batch runs
at a time per worker, which bounds memory; errors reach exactly the callers of that batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
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


class BatchedWorker:
    def __init__(self, name: str, fn: Callable[[list[Any]], Sequence[Any]], max_batch: int = 32,
                 max_wait: float = 0.005, clock: BusyClock | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.name, self.fn, self.max_batch, self.max_wait = name, fn, max_batch, max_wait
        self.stats = WorkerStats()
        self.clock = clock  # shared by the workers of a run, to time model calls as a whole
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def __call__(self, item: Any) -> Any:
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._serve(), name=f"worker-{self.name}")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _serve(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout=self.max_wait))
                except TimeoutError:
                    break  # idle: run what we have
            items, futures = [b[0] for b in batch], [b[1] for b in batch]
            t0 = time.perf_counter()
            try:
                results = await asyncio.to_thread(self._timed, items)
                if len(results) != len(items):
                    raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} inputs")
            except Exception as e:  # noqa: BLE001 - handed to the callers of this batch
                for f in futures:
                    if not f.done():
                        f.set_exception(e)
                continue
            finally:
                self.stats.busy_seconds += time.perf_counter() - t0
                self.stats.batches += 1
                self.stats.calls += len(items)
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
