"""SIGKILL a run at random moments (seeded), at least 20 times, resuming it after each kill: every
session finishes with no round lost or duplicated, every file is valid, and the result equals an
uninterrupted run's, image for image. Stand-in models (tests/fakes.py): the orchestration is tested,
whatever embedded model ships."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.store import RunStore

CHILD = Path(__file__).with_name("loop_child.py")
ROOT = CHILD.parent.parent
N = 8
KILLS = 20
SEED = int(os.environ.get("REFLOOP_KILL_SEED", "20240615"))


def rounds_on_disk(run: Path) -> dict[str, int]:
    out = {}
    for f in (run / "sessions").glob("*.json") if (run / "sessions").is_dir() else []:
        if not f.name.startswith("."):
            out[f.stem] = len(json.loads(f.read_text())["rounds"])
    return out


def start(run: Path, width: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(CHILD), str(run), str(N), str(width)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(run: Path, width: int) -> None:
    proc = start(run, width)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]


def outcome(run: Path) -> dict[str, tuple]:
    """Every session's rounds (content-addressed image paths, candidates, critiques) and its ending."""
    store = RunStore.open(run)
    records = list(store.sessions())
    assert len(records) == N and all(r.status == "done" for r in records), [(r.id, r.status, r.error) for r in records]
    result = {}
    for r in records:
        assert [x.index for x in r.rounds] == list(range(len(r.rounds)))  # no duplicates, no gaps
        for x in r.rounds:
            assert store.load_image(x.image).shape == (64, 64, 3)
            assert all(store.load_image(c).shape == (64, 64, 3) for c in x.candidates)
        result[r.id] = (r.stop_reason, r.final_image, [(x.image, tuple(x.candidates), x.critique) for x in r.rounds])
    lines = (run / "sessions.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(result)
    assert not list(run.rglob("*.tmp"))
    return result


@pytest.mark.slow
def test_random_sigkills_then_resume_equal_an_uninterrupted_run(tmp_path):
    rng = random.Random(SEED)
    reference = {}
    for width in (1, 2):  # 2: every round fans out to two candidates, picked by the judge
        finish(tmp_path / f"reference-{width}", width)
        reference[width] = outcome(tmp_path / f"reference-{width}")
    kills, trial, points = 0, 0, []
    while kills < KILLS:
        width, run = 1 + trial % 2, tmp_path / f"trial-{trial}"
        seen: dict[str, int] = {}
        for _ in range(6):  # kill this run up to six times, then let it finish
            proc = start(run, width)
            assert proc.stdout.readline().strip() == "ready"
            wait = rng.uniform(0.0, 0.6)
            time.sleep(wait)
            if proc.poll() is not None:
                break  # it finished first: this trial is done
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            points.append((trial, round(wait, 3), sum(rounds_on_disk(run).values())))
            for sid, n in rounds_on_disk(run).items():
                assert n >= seen.get(sid, 0), f"{sid} lost rounds across a kill at {points[-1]}"
                seen[sid] = n
        finish(run, width)
        assert outcome(run) == reference[width], f"trial {trial} (seed {SEED}, kills {points})"
        trial += 1
    assert kills >= KILLS and len({p[2] for p in points}) > 3, points  # kills landed at many different moments
