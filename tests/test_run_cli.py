"""`refloop run` end to end on stand-in models (tests/fakes.py), its exit status, its writer lock,
and its refusals of bad input."""

import json
import os

import pytest
import yaml
from typer.testing import CliRunner

from agent.cli import app
from agent.store import RunStore
from tests.fakes import use_fake_models

runner = CliRunner()
PROMPTS = ["a red circle", "two squares", "a triangle above a circle"]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"concurrency": 4, "max_batch": 4, "stop": {"max_rounds": 1}}))
    return path


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    use_fake_models(monkeypatch, tmp_path / "models")


def test_run_writes_a_complete_run_and_resume_is_a_no_op(tmp_path, config, fakes):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *PROMPTS, "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "run summary" in result.output and str(out) in result.output.replace("\n", "")
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["models"]) == {"image", "critic"} and manifest["config"]["stop"]["max_rounds"] == 1
    sessions = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    assert len(sessions) == 3 and all(s["status"] == "done" and s["stop_reason"] for s in sessions)
    assert all(s["rounds"][0]["critique"] is not None for s in sessions)
    before = (out / "sessions.jsonl").read_text()
    again = runner.invoke(app, ["run", "--resume", str(out)])
    assert again.exit_code == 0, again.output
    assert (out / "sessions.jsonl").read_text() == before


def test_a_failed_session_exits_1(tmp_path, config, monkeypatch):
    use_fake_models(monkeypatch, tmp_path / "models", fail_on="two squares")
    config.write_text(yaml.safe_dump({"max_batch": 1, "stop": {"max_rounds": 1}}))  # one session a model call
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *PROMPTS, "--config", str(config), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "1 session(s) failed: p00001" in result.output and "--failures" in result.output
    statuses = {s.id: s.status for s in RunStore.open(out).sessions()}
    assert statuses == {"p00000": "done", "p00001": "failed", "p00002": "done"}


def test_review_with_stdin_closed_exits_1_and_says_why(tmp_path, config, fakes):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *PROMPTS, "--config", str(config), "--out", str(out), "--review"], input="")
    records = list(RunStore.open(out).sessions())
    if all(r.status == "done" for r in records):  # every critic was satisfied at once: nothing to review
        pytest.skip("no session reached a revision")
    assert result.exit_code == 1, result.output
    assert any("standard input is closed" in (r.error or "") for r in records)


def test_two_writers_the_second_is_refused_with_the_holders_pid(tmp_path, config, fakes):
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", *PROMPTS, "--config", str(config), "--out", str(out)]).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with RunStore.open(out, writer=True):  # another writer holds the run
        result = runner.invoke(app, ["run", "--resume", str(out)])
        assert result.exit_code == 2, result.output
        assert f"being written by process {os.getpid()}" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    again = runner.invoke(app, ["run", "--resume", str(out)])  # the lock went with its holder
    assert again.exit_code == 0, again.output


def test_a_session_left_unfinished_exits_1(tmp_path, config, fakes):
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", *PROMPTS, "--config", str(config), "--out", str(out)]).exit_code == 0
    path = out / "sessions" / "p00001.json"  # its graph ended, its record did not: resume cannot end it
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "status": "running", "stop_reason": None}))
    result = runner.invoke(app, ["run", "--resume", str(out)])
    assert result.exit_code == 1, result.output
    assert "1 session(s) unfinished" in result.output


@pytest.mark.parametrize("args,message", [
    (["run", ""], "empty"),
    (["run", "a hexagon"], "'hexagon'"),
    (["run"], "exactly one"),
    (["run", "a circle", "--suite", "dev"], "exactly one"),
    (["run", "a circle", "--max-rounds", "-1"], "--max-rounds"),
    (["run", "--suite", "validation"], "unknown split"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, config, args, message):
    out = tmp_path / "run"
    result = runner.invoke(app, args + ["--config", str(config), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_bad_config_and_model_folders(tmp_path, config):
    out = tmp_path / "run"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stop": {"max_round": 2}}))
    result = runner.invoke(app, ["run", "a circle", "--config", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "stop.max_round is not a known setting" in result.output and not out.exists()
    cfg = yaml.safe_load(config.read_text())
    cfg["models"] = {"image": {"path": str(tmp_path / "missing")}, "critic": {"path": str(tmp_path / "missing")}}
    bad.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["run", "a circle", "--config", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "missing" in result.output and not out.exists(), result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["run", "a circle", "--config", str(config), "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2 and (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    result = runner.invoke(app, ["run", "--resume", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "not a refloop run" in result.output
