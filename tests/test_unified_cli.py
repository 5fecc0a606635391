"""The unified model's commands (`refloop world draw/edit/reflect/eval`) and its place as the default role."""

from __future__ import annotations

import json

import pytest


def test_unified_is_the_default_of_every_embedded_role():
    from agent.config import RunConfig

    cfg = RunConfig()
    assert cfg.models.image.kind == "unified" and cfg.models.critic.kind == "unified"
    judge = RunConfig.model_validate({"models": {"judge": {"kind": "unified"}}, "search": {"judge": "model"}})
    assert judge.models.judge.kind == "unified"


def test_world_commands_draw_edit_and_reflect_with_a_model_folder(tiny_models, tmp_path):
    from typer.testing import CliRunner

    from agent.cli import app

    runner, model = CliRunner(), str(tiny_models / "unified")
    grid, one, edited = tmp_path / "grid.png", tmp_path / "one.png", tmp_path / "edited.png"
    result = runner.invoke(app, ["world", "generate", "a red circle", "two squares", "--out", str(grid),
                                 "--model", model])
    assert result.exit_code == 0 and grid.is_file(), result.output
    assert runner.invoke(app, ["world", "generate", "a red circle", "--out", str(one), "--model", model]).exit_code == 0
    for extra in ([], ["--prompt", "a blue circle"]):  # a plain edit, and a revision with the prompt in view
        result = runner.invoke(app, ["world", "edit", str(one), "make the red circle blue", "--out", str(edited),
                                     "--model", model, *extra])
        assert result.exit_code == 0 and edited.is_file(), result.output
    result = runner.invoke(app, ["world", "reflect", "a red circle", str(one), "--model", model])
    assert result.exit_code == 0, result.output


def test_the_report_card_counts_every_own_wrong_image_once(tiny_models, tmp_path):
    from typer.testing import CliRunner

    from agent.cli import app
    from model.unified.bundle import DEFAULT_MODEL

    shipped = {p: p.read_bytes() for p in DEFAULT_MODEL.glob("eval_*.json")}
    out = tmp_path / "card.json"
    result = CliRunner().invoke(app, ["world", "eval", "unified", "--model", str(tiny_models / "unified"),
                                      "--per-family", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    card = json.loads(out.read_text())
    assert (card["guidance"], card["temperature"]) == (1.5, 1.0)  # a folder without sampling.json
    n = 2 * len(card["one_shot"]) - 2 * 2  # families (overall and held_out are not families)
    rev = card["revision"]
    assert rev["n_wrong"] == round((1 - card["one_shot"]["overall"]) * n)
    assert 0 <= rev["n_ideal_edits"] <= rev["n_wrong"]
    assert 0 <= rev["fresh_drawing_right"] <= 1 and 0 <= card["edits_rendered"]["overall"] <= 1
    assert {p: p.read_bytes() for p in DEFAULT_MODEL.glob("eval_*.json")} == shipped  # another folder's card


@pytest.mark.parametrize("args,message", [
    (["world", "generate", "a hexagon", "--out", "x.png"], "hexagon"),
    (["world", "edit", "missing.png", "paint it blue", "--out", "y.png"], "paint"),
    (["world", "generate", "a circle", "--out", "x.png", "--model", "nowhere"], "nowhere"),
    (["world", "train", "unified", "--config", "nowhere.yaml"], "no such config file"),
    (["world", "train", "unified", "--only", "lm"], "--only"),
    (["world", "eval", "unified", "--split", "holdout"], "unknown split"),
    (["world", "eval", "unified", "--batch-size", "0"], "--batch-size must be between 1 and 1024"),
    (["world", "eval", "unified", "--per-family", "-3"], "--per-family must be between 1 and 1000"),
    (["world", "eval", "unified", "--per-family", "1", "--right-threshold", "1.5"], "--right-threshold must"),
    (["world", "generate", "a circle", "--out", "x.png", "--guidance", "-1"], "--guidance"),
    (["world", "generate", "a circle", "--out", "x.png", "--temperature", "11"], "--temperature must be between"),
])
def test_bad_input_to_the_model_commands_exits_2_and_writes_nothing(tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    from agent.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(tmp_path.iterdir()) == []
