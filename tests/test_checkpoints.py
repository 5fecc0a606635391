"""The runs' checkpointer (agent/checkpoints.py) and the store's recent images: what the runner's
speed between model batches rests on, and what an older run directory still needs."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from typing_extensions import TypedDict

from agent.images import RecentImages


class Count(TypedDict):
    n: int


def two_steps():
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(Count)
    graph.add_node("a", lambda s: {"n": s["n"] + 1})
    graph.add_node("b", lambda s: {"n": s["n"] * 10})
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("b", END)
    return graph


def test_a_run_checkpointed_by_aiosqlite_resumes_and_keeps_its_history(tmp_path):
    """Run directories written before (AsyncSqliteSaver, the same tables) resume where they stopped."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from agent.checkpoints import open_checkpointer

    path, config = tmp_path / "checkpoints.sqlite", {"configurable": {"thread_id": "s0"}}

    async def before():
        async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
            await two_steps().compile(checkpointer=saver, interrupt_before=["b"]).ainvoke({"n": 1}, config)

    async def now():
        saver = await open_checkpointer(path, serde=None)
        try:
            graph = two_steps().compile(checkpointer=saver)
            paused = await graph.aget_state(config)
            done = await graph.ainvoke(None, config, durability="sync")
            history = [s async for s in graph.aget_state_history(config)]
            return paused, done, history
        finally:
            await saver.close()

    asyncio.run(before())
    paused, done, history = asyncio.run(now())
    assert paused.next == ("b",) and paused.values == {"n": 2}
    assert done == {"n": 20}
    assert [s.values.get("n") for s in history][:3] == [20, 2, 1]


def test_many_sessions_write_their_checkpoints_at_once(tmp_path):
    from agent.checkpoints import open_checkpointer

    async def main():
        saver = await open_checkpointer(tmp_path / "checkpoints.sqlite", serde=None)
        try:
            graph = two_steps().compile(checkpointer=saver)
            return await asyncio.gather(*(graph.ainvoke({"n": i}, {"configurable": {"thread_id": f"s{i}"}},
                                                        durability="sync") for i in range(32)))
        finally:
            await saver.close()

    assert asyncio.run(main()) == [{"n": (i + 1) * 10} for i in range(32)]


def test_recent_images_come_back_read_only_and_the_oldest_go_first():
    images = [np.full((64, 64, 3), k, np.uint8) for k in range(4)]
    recent = RecentImages(budget=3 * images[0].nbytes)
    for k, img in enumerate(images):
        recent.put(f"images/{k}.png", img)
    assert recent.get("images/0.png") is None  # over the budget: the oldest left
    back = recent.get("images/3.png")
    assert np.array_equal(back, images[3]) and not back.flags.writeable
    images[3][:] = 99  # the caller's array may change; the stored pixels do not
    assert recent.get("images/3.png")[0, 0, 0] == 3
    assert recent.size == 3 * images[0].nbytes


def test_the_writer_reads_its_own_images_back_without_decoding_them(tmp_path):
    from agent.store import RunStore
    from agent.trajectory import RunManifest

    store = RunStore.create(tmp_path / "run", RunManifest(run_id="t", created_at=time.time(), seed=0,
                                                          refloop_version="test"))
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rel = store.put_image(image)
    assert store.image_path(rel).is_file()  # written as before
    store.image_path(rel).write_bytes(b"not a png")  # a decode would fail
    assert np.array_equal(store.load_image(rel), image)
    store.close()
    reader = RunStore.open(tmp_path / "run")  # another process: reads the file
    reader.image_path(rel).unlink()
    try:
        reader.load_image(rel)
        raise AssertionError("a reader has no images of its own in memory")
    except Exception as e:  # noqa: BLE001
        assert "no image" in str(e)

