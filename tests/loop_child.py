"""Child process for the kill test: runs (or resumes) a loop run on stand-in models (tests/fakes.py).

    python tests/loop_child.py RUN_DIR N_SESSIONS [WIDTH]

The models are numpy functions of their input (a restarted process draws and says the same things
about the same images), with a little time in flight for the kills to land in. WIDTH > 1 searches:
WIDTH candidates per round, picked by the verifier judge. Prints "ready" once the run is open."""

import asyncio
import sys
import time
from pathlib import Path

from agent.runner import SessionSpec, make_runtime, run_sessions
from agent.store import RunStore
from agent.trajectory import RunManifest
from policies.search import SearchPolicy
from policies.stop import StopPolicy
from rewards.verifier import VerifierReward
from tests.fakes import fake_models
from world import check_image

PROMPTS = ["a circle", "two squares", "a red triangle", "a blue circle above a square"]


def main(run_dir: str, n: int, width: int = 1) -> None:
    run = Path(run_dir)
    if (run / "manifest.json").exists():
        store = RunStore.open(run, writer=True)
    else:
        store = RunStore.create(run, RunManifest(run_id="kill", created_at=time.time(), seed=0,
                                                 refloop_version="test"))
    image_model, critic, _ = fake_models(run.parent / "models", delay=0.03)
    search = SearchPolicy(best_of=width, revisions=width, judge="verifier" if width > 1 else None)
    rt = make_runtime(store, image_model, image_model, critic, StopPolicy(max_rounds=3), max_batch=4, search=search,
                      judge=VerifierReward(check_image) if width > 1 else None)
    specs = [SessionSpec(id=f"s{i:02d}", prompt=PROMPTS[i % len(PROMPTS)], seed=i) for i in range(n)]
    print("ready", flush=True)
    asyncio.run(run_sessions(rt, specs, concurrency=4))
    store.write_jsonl()
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    print("done", Path(sys.argv[1]))
