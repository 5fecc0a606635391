import asyncio
import time

import pytest

from model.worker import BatchedWorker


def test_merges_concurrent_calls_and_keeps_order():
    seen = []

    def double(batch):
        seen.append(list(batch))
        time.sleep(0.01)
        return [2 * x for x in batch]

    async def main():
        worker = BatchedWorker("double", double, max_batch=8)
        results = await asyncio.gather(*(worker(i) for i in range(20)))
        await worker.close()
        return results, worker.stats

    results, stats = asyncio.run(main())
    assert results == [2 * i for i in range(20)]
    assert max(len(b) for b in seen) == 8 and stats.batches < 20 and stats.calls == 20


def test_errors_reach_only_their_batch():
    def picky(batch):
        if any(x < 0 for x in batch):
            raise ValueError("negative")
        return batch

    async def main():
        worker = BatchedWorker("picky", picky, max_batch=4)
        bad = await asyncio.gather(worker(-1), return_exceptions=True)
        good = await worker(3)  # the worker survives a failed batch
        await worker.close()
        return bad, good

    bad, good = asyncio.run(main())
    assert isinstance(bad[0], ValueError) and good == 3


def test_rejects_wrong_result_count_and_bad_batch_size():
    async def main():
        worker = BatchedWorker("short", lambda b: b[:-1], max_batch=4)
        with pytest.raises(RuntimeError, match="results for"):
            await worker(1)
        await worker.close()

    asyncio.run(main())
    with pytest.raises(ValueError):
        BatchedWorker("x", lambda b: b, max_batch=0)


def recorder(sizes: list[int]):
    """An identity model that notes the size of each batch it gets."""

    def record(batch):
        sizes.append(len(batch))
        return batch

    return record


def test_a_crowd_fills_the_batch_when_sessions_arrive_apart():
    """Sessions reach the model 20 ms apart (store and checkpoint writes in between): a 5 ms idle
    timer would run them one by one; with the crowd, the worker waits until every session in
    flight is parked on a model, then runs them as one batch."""
    from model.worker import Crowd

    seen = []
    record = recorder(seen)

    async def main():
        crowd = Crowd()
        worker = BatchedWorker("m", record, max_batch=8, crowd=crowd, max_wait=1.0)

        async def session(i):
            with crowd.session(f"s{i}"):
                await asyncio.sleep(0.02 * i)
                return await worker(i)

        results = await asyncio.gather(*(session(i) for i in range(5)))
        await worker.close()
        return results, crowd

    results, crowd = asyncio.run(main())
    assert results == list(range(5)) and seen == [5]
    assert crowd.active == 0 and not crowd.parked


def test_a_crowd_does_not_wait_past_max_wait_or_for_sessions_away():
    from model.worker import Crowd

    seen = []
    record = recorder(seen)

    async def main():
        crowd = Crowd()
        worker = BatchedWorker("m", record, max_batch=8, crowd=crowd, max_wait=0.05)

        async def busy():  # in flight, never calls this model soon
            with crowd.session("busy"):
                await asyncio.sleep(0.5)

        async def reviewed():  # a person reviews it: away, not waited for
            with crowd.session("reviewed"), crowd.away():
                await asyncio.sleep(0.5)

        async def caller():
            with crowd.session("caller"):
                await asyncio.sleep(0.01)
                t0 = time.perf_counter()
                await worker(1)
                return time.perf_counter() - t0

        waited, *_ = await asyncio.gather(caller(), busy(), reviewed())
        await worker.close()
        return waited

    waited = asyncio.run(main())
    assert seen == [1] and 0.04 <= waited < 0.3  # the cap, not the busy session's 0.5 s


def test_workers_sharing_a_turn_run_one_batch_at_a_time_and_cohorts_merge():
    """Four sessions each call model a, then model b. The first two reach a alone (a short wait
    splits them from the other two). Without a turn, b runs the first pair while a runs the second,
    and b sees two half batches; with one, b waits for a and gets all four at once."""
    from model.worker import Crowd, Turn

    def run(turn):
        seen, spans = {"a": [], "b": []}, []

        def model(name):
            def fn(batch):
                t0 = time.perf_counter()
                time.sleep(0.2)
                seen[name].append(len(batch))
                spans.append((t0, time.perf_counter()))
                return batch
            return fn

        async def main():
            crowd = Crowd()
            a = BatchedWorker("a", model("a"), max_batch=8, crowd=crowd, max_wait=0.01, turn=turn)
            b = BatchedWorker("b", model("b"), max_batch=8, crowd=crowd, max_wait=0.5, turn=turn)

            async def session(i):
                with crowd.session(f"s{i}"):
                    await asyncio.sleep(0.0 if i < 2 else 0.08)  # while a runs the first two
                    return await b(await a(i))

            results = await asyncio.gather(*(session(i) for i in range(4)))
            await a.close(), await b.close()
            return results

        assert asyncio.run(main()) == [0, 1, 2, 3]
        overlaps = any(s < e0 and s0 < e for k, (s0, e0) in enumerate(spans) for s, e in spans[k + 1:])
        return seen, overlaps

    seen, overlaps = run(None)
    assert seen["a"] == [2, 2] and seen["b"] == [2, 2] and overlaps
    seen, overlaps = run(Turn())
    assert seen["a"] == [2, 2] and seen["b"] == [4] and not overlaps


def test_a_turn_serves_one_event_loop_after_another():
    """A runtime outlives an `asyncio.run` (the bench runs its arms one after the other)."""
    from model.worker import Turn

    turn = Turn()
    worker = BatchedWorker("m", lambda b: b, max_batch=4, turn=turn)
    for k in range(2):
        async def main(k=k):
            out = await asyncio.gather(worker(k), worker(k + 1))
            await worker.close()
            return out
        assert asyncio.run(main()) == [k, k + 1]


def test_a_model_call_does_not_queue_behind_the_sessions_file_io():
    """The default executor full of slow session work (image writes, say): a batch still starts at once,
    on the worker's own thread."""
    import threading

    release = threading.Event()

    async def main():
        worker = BatchedWorker("double", lambda batch: [2 * x for x in batch])
        loop = asyncio.get_running_loop()
        slow = [loop.run_in_executor(None, release.wait, 5) for _ in range(64)]  # more than the pool's threads
        t0 = time.perf_counter()
        result = await worker(21)
        waited = time.perf_counter() - t0
        release.set()
        await asyncio.gather(*slow)
        await worker.close()
        return result, waited

    result, waited = asyncio.run(main())
    assert result == 42 and waited < 2  # queued behind the busy pool, it would wait the whole 5 s
