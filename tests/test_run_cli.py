"""`refloop run` end to end on tiny random models, and its refusals of bad input."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from agent.cli import app

runner = CliRunner()


@pytest.fixture
def config(tiny_run_config):
    return tiny_run_config


def test_run_writes_a_complete_run_and_resume_is_a_no_op(tmp_path, config):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "a red circle", "two squares", "a triangle above a circle",
                                 "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "run summary" in result.output and str(out) in result.output.replace("\n", "")
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["models"]) == {"image", "critic"} and manifest["config"]["stop"]["max_rounds"] == 1
    sessions = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    assert len(sessions) == 3 and all(s["status"] == "done" and s["stop_reason"] for s in sessions)
    assert all(s["rounds"][0]["critique"] is not None for s in sessions)  # a random critic still wrote something
    before = (out / "sessions.jsonl").read_text()
    again = runner.invoke(app, ["run", "--resume", str(out)])
    assert again.exit_code == 0, again.output
    assert (out / "sessions.jsonl").read_text() == before


@pytest.mark.parametrize("args,message", [
    (["run", ""], "empty"),
    (["run", "a hexagon"], "'hexagon'"),
    (["run"], "exactly one"),
    (["run", "a circle", "--suite", "dev"], "exactly one"),
    (["run", "a circle", "--max-rounds", "-1"], "max_rounds"),
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
    assert result.exit_code == 2 and "max_round" in result.output and not out.exists()
    cfg = yaml.safe_load(config.read_text())
    cfg["models"]["critic"]["path"] = str(tmp_path / "missing")
    bad.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["run", "a circle", "--config", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "no critic at" in result.output and not out.exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["run", "a circle", "--config", str(config), "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2 and (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    result = runner.invoke(app, ["run", "--resume", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "not a refloop run" in result.output
