"""The learned reward model: rows from logged runs, a session-level held-out split, training that
learns (it fits its rows), scores in [0, 1] with reasons, and AUC computed right."""

import time

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from agent.cli import app
from agent.store import RunStore
from agent.train_reward import RewardTrainConfig, auc, evaluate, is_held_out, train_reward, trajectory_rows
from agent.trajectory import RoundRecord, RunManifest, SessionRecord
from model.critic.build import CriticConfig, LanguageModel, VisionTower
from rewards.learned import LearnedReward
from world import render_one, scene_for_prompt

# patch 16 / width 32 does not learn blank-vs-shape in 150 steps; patch 8 / width 64 does in 100
TINY = CriticConfig(vision=VisionTower(hidden=64, layers=1, heads=2, intermediate=128, patch_size=8),
                    text=LanguageModel(hidden=48, layers=1, heads=2, intermediate=96, max_positions=96))
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]


def make_run(path, n_sessions=24):
    """Sessions whose round 0 misses its object (a blank canvas: wrong) and round 1 is the right scene."""
    rng = np.random.default_rng(0)
    store = RunStore.create(path, RunManifest(run_id=path.name, created_at=time.time(), seed=0,
                                              refloop_version="test"))
    for i in range(n_sessions):
        prompt = PROMPTS[i % len(PROMPTS)]
        right = scene_for_prompt(prompt, rng)
        store.start_session(SessionRecord(id=f"s{i:02d}", prompt=prompt, seed=i))
        for k, (image, ok) in enumerate([(np.full((64, 64, 3), 255, np.uint8), False), (render_one(right), True)]):
            store.upsert_round(f"s{i:02d}", RoundRecord(index=k, image=store.put_image(image), correct=ok))
        store.finish_session(f"s{i:02d}", "critic_satisfied")
    return path


def test_rows_and_split(tmp_path):
    run = make_run(tmp_path / "run")
    rows = trajectory_rows([run])
    assert len(rows) == 48 and {r["reflection"] for r in rows} == {"right", "wrong"}
    train = trajectory_rows([run], 0.25)
    held = trajectory_rows([run], 0.25, want_held_out=True)
    assert len(train) + len(held) == 48 and held and train
    assert {r["prompt"] for r in held} <= set(PROMPTS)
    assert is_held_out("run", "s01", 0.25) == is_held_out("run", "s01", 0.25)  # stable


def test_auc():
    assert auc(np.array([0.9, 0.8, 0.1]), np.array([True, True, False])) == 1.0
    assert auc(np.array([0.1, 0.2, 0.9]), np.array([True, True, False])) == 0.0
    assert auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert auc(np.array([0.5]), np.array([True])) is None


def test_training_fits_and_scores(tmp_path):
    run = make_run(tmp_path / "run")
    cfg = RewardTrainConfig(model=TINY, steps=150, batch_size=16, lr=1e-3, warmup=10, checkpoint_every=150,
                            held_out=0.2)
    out, report = train_reward(cfg, [run], tmp_path / "work", tmp_path / "reward", device="cpu", log=lambda m: None)
    assert (out / "training.json").is_file() and (out / "eval_held_out.json").is_file()
    assert report is not None and 0 <= report.accuracy <= 1 and report.rows > 0
    reward = LearnedReward(out)
    rows = trajectory_rows([run], 0.2)
    fitted = evaluate(reward, [r["prompt"] for r in rows], [r["image"] for r in rows],
                      [r["reflection"] == "right" for r in rows])
    assert fitted.auc >= 0.95 and fitted.accuracy >= 0.75, fitted  # it learned its rows (a blank canvas is wrong)
    scored = reward.score([rows[0]["prompt"]], [rows[0]["image"]])
    assert 0 <= scored[0].value <= 1 and "P(right)" in scored[0].reason


def test_no_rows_is_an_error(tmp_path):
    store = RunStore.create(tmp_path / "empty", RunManifest(run_id="e", created_at=time.time(), seed=0,
                                                            refloop_version="test"))
    with pytest.raises(ValueError, match="both right and wrong"):
        train_reward(RewardTrainConfig(model=TINY, steps=1), [store.root], tmp_path / "w", tmp_path / "o")


def test_train_and_eval_reward_commands(tmp_path, tiny_models, monkeypatch):
    from rich.console import Console

    monkeypatch.setattr("agent.cli_train.console", Console(width=200))
    run = make_run(tmp_path / "run", n_sessions=8)
    config = tmp_path / "reward.yaml"
    config.write_text(yaml.safe_dump(RewardTrainConfig(model=TINY, steps=4, batch_size=8, checkpoint_every=4,
                                                       held_out=0.3).model_dump(mode="json")))
    cli = CliRunner()
    trained = cli.invoke(app, ["train", "reward", str(run), "--config", str(config), "--work", str(tmp_path / "w")])
    assert trained.exit_code == 0, trained.output
    assert "learned reward vs verifier" in trained.output and (tmp_path / "w" / "reward" / "config.json").is_file()
    judged = cli.invoke(app, ["eval", "reward", "--model", str(tmp_path / "w" / "reward"), "--per-family", "1",
                              "--generator", str(tiny_models / "unified"), str(run)])
    assert judged.exit_code == 0, judged.output
    assert "fresh dev images" in judged.output and "gap" in judged.output
    bad = cli.invoke(app, ["train", "reward", str(tmp_path / "nope"), "--work", str(tmp_path / "w2")])
    assert bad.exit_code == 2
    config.write_text("steps: -3\n")
    assert cli.invoke(app, ["train", "reward", str(run), "--config", str(config)]).exit_code == 2
