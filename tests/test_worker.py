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
