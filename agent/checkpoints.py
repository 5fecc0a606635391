"""The runs' checkpointer: LangGraph's SqliteSaver (the same tables as AsyncSqliteSaver), each call
made whole in one thread of its own for the event loop.

Why not AsyncSqliteSaver: it makes every write four event-loop round trips to aiosqlite's thread
(cursor, execute, commit, close) under one asyncio lock shared by every session, so 32 sessions'
writes queued behind one another while the model waited: 25 ms per write on average, a quarter of a
second after each batch of 32 (traced in `refloop bench --perf`). Here a write is one hop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.sqlite import SqliteSaver


class ThreadedSqliteSaver(SqliteSaver):
    """SqliteSaver's own methods, run in one worker thread (SQLite serialises writers anyway)."""

    def __init__(self, conn: sqlite3.Connection, *, serde: SerializerProtocol | None = None):
        super().__init__(conn, serde=serde)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoints")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def aget_tuple(self, config):
        return await self._run(self.get_tuple, config)

    async def alist(self, config, *, filter: dict[str, Any] | None = None, before=None,
                    limit: int | None = None) -> AsyncIterator:
        for item in await self._run(lambda: list(self.list(config, filter=filter, before=before, limit=limit))):
            yield item

    async def aput(self, config, checkpoint, metadata, new_versions):
        return await self._run(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = "") -> None:
        await self._run(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run(self.delete_thread, thread_id)

    async def close(self) -> None:
        await self._run(self.conn.close)
        self._thread.shutdown()


async def open_checkpointer(path: Path, serde: SerializerProtocol) -> ThreadedSqliteSaver:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False)  # used from the saver's thread only
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at each commit, minus fsync storms
        return conn

    saver = ThreadedSqliteSaver(await asyncio.to_thread(connect), serde=serde)
    await saver._run(saver.setup)
    return saver
