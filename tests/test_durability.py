"""SIGKILL a run mid-session, several times, then resume it: every session finishes, no round
is lost or duplicated, every file is valid."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agent.store import RunStore
from model.shapeworld.build import build_pipeline
from model.shapeworld.config import GeneratorConfig

TINY = {"vae": {"block_out_channels": [8, 8, 8]},
        "denoiser": {"num_layers": 2, "heads": 2, "head_dim": 8, "text_hidden": 16, "text_layers": 1}}
CHILD = Path(__file__).with_name("loop_child.py")
N = 6


def rounds_on_disk(run: Path) -> dict[str, int]:
    out = {}
    for f in (run / "sessions").glob("*.json") if (run / "sessions").is_dir() else []:
        out[f.stem] = len(json.loads(f.read_text())["rounds"])
    return out


def start(model: Path, run: Path, width: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(CHILD.parent.parent))
    return subprocess.Popen([sys.executable, str(CHILD), str(model), str(run), str(N), str(width)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.parametrize("width", [1, 2])  # 2: every round fans out to two candidates
def test_sigkill_and_resume(tmp_path, width):
    torch.manual_seed(0)
    model = tmp_path / "model"
    build_pipeline(GeneratorConfig.model_validate(TINY)).save_pretrained(model)
    run = tmp_path / "run"
    seen: dict[str, int] = {}
    kills = 0
    for wait_rounds in (2, 6, 11):  # kill once this many rounds are on disk
        proc = start(model, run, width)
        deadline = time.time() + 120
        while sum(rounds_on_disk(run).values()) < wait_rounds and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        for sid, n in rounds_on_disk(run).items():
            assert n >= seen.get(sid, 0), f"{sid} lost rounds across a kill"
            seen[sid] = n
    proc = start(model, run, width)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert kills >= 2

    store = RunStore.open(run)
    records = list(store.sessions())
    assert len(records) == N and all(r.status == "done" for r in records), [(r.id, r.status, r.error) for r in records]
    for r in records:
        assert [x.index for x in r.rounds] == list(range(len(r.rounds)))  # no duplicates, no gaps
        assert len(r.rounds) >= seen.get(r.id, 0)
        assert all(x.critique is not None for x in r.rounds)  # every image was critiqued once
        assert r.stop_reason in ("critic_satisfied", "max_rounds") and len(r.rounds) <= 4
        for x in r.rounds:
            assert store.load_image(x.image).shape == (64, 64, 3)
            assert len(x.candidates) == (width if width > 1 else 0) and (width == 1 or x.image in x.candidates)
            assert all(store.load_image(c).shape == (64, 64, 3) for c in x.candidates)
    lines = (run / "sessions.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(r.id for r in records)
    assert not list(run.rglob("*.tmp"))
