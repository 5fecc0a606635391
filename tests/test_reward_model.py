"""The learned reward on the unified LM: pairs from logged runs and fresh drawings with a group-level
held-out split, metrics computed right, real TRL RewardTrainer training that learns, resumes after an
interruption and exports a folder the loop's judge loads, and `refloop eval reward`."""

import json
import time

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from agent.cli import app
from agent.export import grpo_dataset
from agent.store import RunStore
from agent.trajectory import RoundRecord, RunManifest, SessionRecord
from model.unified.bundle import UnifiedModel, as_canvas
from model.unified.vq import encode
from rewards import pairs as P
from rewards.learned import LearnedReward
from rewards.metrics import auc, ece, platt, report
from world import render_one, scene_for_prompt

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]
runner = CliRunner()


def make_run(path, n_sessions=12):
    """Sessions whose round 0 misses its object (a blank canvas: wrong) and round 1 is the right scene."""
    rng = np.random.default_rng(0)
    store = RunStore.create(path, RunManifest(run_id=path.name, created_at=time.time(), seed=0,
                                              refloop_version="test"))
    for i in range(n_sessions):
        prompt = PROMPTS[i % len(PROMPTS)]
        store.start_session(SessionRecord(id=f"s{i:02d}", prompt=prompt, seed=i))
        for k, (image, ok) in enumerate([(np.full((64, 64, 3), 255, np.uint8), False),
                                         (render_one(scene_for_prompt(prompt, rng)), True)]):
            store.upsert_round(f"s{i:02d}", RoundRecord(index=k, image=store.put_image(image), correct=ok))
        store.finish_session(f"s{i:02d}", "critic_satisfied")
    return path


@pytest.fixture(scope="module")
def global_codes(tmp_path_factory):
    """A tiny random unified model whose VQ encodes the whole image at once: a random VQ that encodes
    each patch alone (local codes) gives every patch of a 64x64 scene the same code, so no reward could
    tell a blank canvas from a shape by its codes."""
    from tests.conftest import tiny_unified

    torch.manual_seed(0)
    model = tiny_unified()
    if "_local_codes" in model.vq.config:
        model.vq.register_to_config(_local_codes=False)
    return model.save(tmp_path_factory.mktemp("global") / "unified")


def small(tmp_path, tiny_models, **over) -> list[str]:
    sets = {"unified_model": str(tiny_models / "unified"), "fresh_per_family": 1, "samples_per_prompt": 2,
            "rendered_per_prompt": 1, "held_out": 0.3, "max_steps": 2, "save_steps": 2, "logging_steps": 1,
            "per_device_train_batch_size": 4, "report_to": "none", **over}
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def test_pairs_split_by_session(tmp_path, tiny_models):
    model = UnifiedModel.load(tiny_models / "unified")
    rows = list(grpo_dataset(RunStore.open(make_run(tmp_path / "run")), rounds="all"))
    items = P.trajectory_items(rows, lambda ims: encode(model.vq, as_canvas(ims)).tolist())
    assert len(items) == 24 and sum(i["correct"] for i in items) == 12 and len(items[0]["codes"]) == 64
    pairs = P.pairs(items, max_per_group=8, seed=0)
    assert len(pairs) == 12 and all(b["correct"] and not w["correct"] and b["group"] == w["group"] for b, w in pairs)
    train, held = P.split(items, 0.3)
    assert train and held and not {i["group"] for i in train} & {i["group"] for i in held}
    assert P.is_held_out("run:x/s01", 0.3) == P.is_held_out("run:x/s01", 0.3)


def test_metrics():
    assert auc(np.array([0.9, 0.8, 0.1]), np.array([True, True, False])) == 1.0
    assert auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert auc(np.array([0.5]), np.array([True])) is None
    assert ece(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    raw = rng.normal(size=4000)
    labels = rng.random(4000) < 1 / (1 + np.exp(-(2.0 * raw - 1.0)))
    a, b = platt(raw, labels)
    assert a == pytest.approx(2.0, abs=0.25) and b == pytest.approx(-1.0, abs=0.2)
    r = report(np.array([0.9, 0.2, 0.7]), np.array([True, False, False]), (np.array([3.0, 1.0]), np.array([0.0, 2.0])))
    assert r.accuracy == pytest.approx(2 / 3) and r.pair_accuracy == 0.5 and r.gap == pytest.approx(0.6 - 1 / 3)


def test_train_reward_learns_resumes_and_judges(tmp_path, tiny_models, loop_run, global_codes):
    """Real RewardTrainer on the tiny unified LM: pairs of a loop run, a hand-made run and fresh drawings;
    interrupted after 2 steps and resumed to 40; it fits its pairs, the export loads as a judge."""
    made = make_run(tmp_path / "made")
    work, args = tmp_path / "work", ["train", "reward", str(loop_run), str(made), "--config", "configs/reward.yaml"]
    learn = {"learning_rate": 1e-3, "unified_model": str(global_codes)}
    first = runner.invoke(app, [*args, "--work", str(work), *small(tmp_path, tiny_models, **learn)])
    assert first.exit_code == 0, first.output
    assert (work / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    items = json.loads((work / "items.json").read_text())
    assert {i["source"] for i in items} >= {"round0", "round1", "drawn", "rendered"}
    again = runner.invoke(app, [*args, "--work", str(work),
                                *small(tmp_path, tiny_models, max_steps=40, **learn)])
    assert again.exit_code == 0, again.output
    assert "resuming at checkpoint-2" in again.output and "learned reward vs verifier" in again.output
    out = work / "reward"
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 40 and record["data"]["train"]["pairs"] > 0
    assert record["fit"]["pair_accuracy"] >= 0.9, record["fit"]  # it learned its pairs (blank vs a shape)
    held = json.loads((out / "eval_held_out.json").read_text())
    assert {"accuracy", "auc", "ece", "pair_accuracy", "gap"} <= set(held)
    reward = LearnedReward(out)
    blank, shape = np.full((64, 64, 3), 255, np.uint8), render_one(scene_for_prompt("a red circle",
                                                                                    np.random.default_rng(5)))
    scored = reward.score(["a red circle"] * 2, [blank, shape])
    assert all(0 <= s.value <= 1 for s in scored) and "P(right)" in scored[0].reason
    assert scored[1].value > scored[0].value
    other = runner.invoke(app, [*args, "--work", str(work), *small(tmp_path, tiny_models, held_out=0.5, **learn)])
    assert other.exit_code == 2 and "other arguments" in other.output

    # the loop's judge (kind: learned) picks best-of-2 with it
    config = yaml.safe_load((tiny_models / "run.yaml").read_text())
    config["models"]["judge"] = {"kind": "learned", "path": str(out)}
    config["search"] = {"best_of": 2, "judge": "model"}
    (tmp_path / "judged.yaml").write_text(yaml.safe_dump(config))
    ran = runner.invoke(app, ["run", "a red circle", "--config", str(tmp_path / "judged.yaml"), "--out",
                              str(tmp_path / "judged")])
    assert ran.exit_code == 0, ran.output
    rounds = [json.loads(line) for line in (tmp_path / "judged" / "sessions.jsonl").read_text().splitlines()]
    assert "learned reward: P(right)" in json.dumps(rounds)


def test_eval_reward_hacking_gap(tmp_path, tiny_models, loop_run, monkeypatch):
    from rich.console import Console

    monkeypatch.setattr("agent.cli_train.console", Console(width=200))
    work = tmp_path / "w"
    trained = runner.invoke(app, ["train", "reward", str(loop_run), "--config", "configs/reward.yaml", "--work",
                                  str(work), *small(tmp_path, tiny_models)])
    assert trained.exit_code == 0, trained.output
    unified = str(tiny_models / "unified")
    judged = runner.invoke(app, ["eval", "reward", "--model", str(work / "reward"), "--per-family", "1",
                                 "--generator", unified, "--policy", unified, str(loop_run)])
    assert judged.exit_code == 0, judged.output
    for row in ("fresh dev images", "repairs", "run run", "gap"):
        assert row in judged.output


@pytest.mark.parametrize("args,message", [
    (["--set", "held_out=2"], "held_out"),
    (["--set", "nonsense=1"], "nonsense"),
    (["--set", "max_steps"], "key=value"),
])
def test_bad_reward_input_exits_2(tmp_path, args, message):
    torch.manual_seed(0)
    result = runner.invoke(app, ["train", "reward", "--config", "configs/reward.yaml", "--work", str(tmp_path / "w"),
                                 *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "w").exists()
    missing = runner.invoke(app, ["train", "reward", str(tmp_path / "nope"), "--work", str(tmp_path / "w2")])
    assert missing.exit_code == 2
