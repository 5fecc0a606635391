"""Child process for the kill test: runs (or resumes) a loop run over a tiny random generator.

    python tests/loop_child.py MODEL_DIR RUN_DIR N_SESSIONS [WIDTH]

The critic is a test double whose reflection is a function of the image alone (so that a
restarted process says the same thing about the same image). WIDTH > 1 searches: WIDTH candidates
per round, picked by the verifier judge."""

import asyncio
import sys
import time
from pathlib import Path

import numpy as np

from agent.runner import SessionSpec, make_runtime, run_sessions
from agent.store import RunStore, StoreError
from agent.trajectory import RunManifest
from model.shapeworld.backend import ShapeWorldImageConfig, ShapeWorldImageModel
from policies.search import SearchPolicy
from policies.stop import StopPolicy
from rewards.verifier import VerifierReward


class ImageHashCritic:
    def critique(self, prompts, images):
        time.sleep(0.05)  # a little time in flight, for the kills to land in
        return ["verdict: right" if int(np.asarray(img, np.int64).sum()) % 3 == 0
                else "verdict: wrong\nedit: add a circle" for img in images]


def main(model_dir: str, run_dir: str, n: int, width: int = 1) -> None:
    try:
        store = RunStore.open(run_dir, writer=True)
    except StoreError:
        store = RunStore.create(run_dir, RunManifest(run_id="kill", created_at=time.time(), seed=0,
                                                     refloop_version="test"))
    model = ShapeWorldImageModel(ShapeWorldImageConfig(path=model_dir, steps=2))
    search = SearchPolicy(best_of=width, revisions=width, judge="verifier" if width > 1 else None)
    rt = make_runtime(store, model, model, ImageHashCritic(), StopPolicy(max_rounds=3), max_batch=4, search=search,
                      judge=VerifierReward() if width > 1 else None)
    specs = [SessionSpec(id=f"s{i:02d}", prompt=["a circle", "two squares", "a red triangle"][i % 3], seed=i)
             for i in range(n)]
    asyncio.run(run_sessions(rt, specs, concurrency=4))
    store.write_jsonl()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    print("done", Path(sys.argv[2]))
