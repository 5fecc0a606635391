"""`refloop run` on served models: the example config for `transformers serve` and the README's worked
config (FLUX.1 Kontext + a served VLM), with tiny random models in their places and a real server
(tests/served_server.py); and a dead server's refusal (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from model.backends.hf_vlm import HFVLMCritic, HFVLMCriticConfig
from model.backends.served import ServedCriticConfig, ServedJudgeConfig
from tests.served_server import free_port

CONFIGS = Path(__file__).parents[1] / "configs"
SERVERS = ["vllm", "sglang", "ollama", "lmstudio", "transformers"]
PROMPTS = ["two red circles above a blue square", "a green triangle"]


def run_config(tmp_path, tiny_models, url, folder):
    """configs/served-transformers.yaml with the two things a user changes (base_url, model) and the image
    model swapped for a tiny one."""
    cfg = yaml.safe_load((CONFIGS / "served-transformers.yaml").read_text())
    for role in ("critic", "judge"):
        cfg["models"][role].update(base_url=url, model=str(folder))
    cfg["models"]["image"]["path"] = str(tiny_models / "unified")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_example_configs_differ_in_url_and_model_only():
    from agent.config import RunConfig

    bodies = {}
    for name in SERVERS:
        cfg = RunConfig.load(CONFIGS / f"served-{name}.yaml")
        critic, judge = cfg.models.critic, cfg.models.judge
        assert isinstance(critic, ServedCriticConfig) and isinstance(judge, ServedJudgeConfig)
        assert (judge.base_url, judge.model) == (critic.base_url, critic.model)
        body = cfg.model_dump()
        for role in ("critic", "judge"):
            del body["models"][role]["base_url"], body["models"][role]["model"]
        bodies[name] = body
    assert all(body == bodies["vllm"] for body in bodies.values())


def test_run_with_a_dead_server_exits_2_in_one_line_and_writes_nothing(tmp_path, tiny_models):
    from agent.cli import app

    url = f"http://127.0.0.1:{free_port()}/v1"
    config, out = run_config(tmp_path, tiny_models, url, "/path/to/model"), tmp_path / "run"
    result = CliRunner().invoke(app, ["run", PROMPTS[0], "--config", str(config), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the served critic at {url} ("), result.output
    assert lines[0].endswith(", 2 retries); start the server or fix models.critic.base_url"), result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]


@pytest.mark.slow
def test_run_with_the_served_critic_and_judge_logs_the_trajectory(tmp_path, tiny_models, served_llava,
                                                                   llava_folder):
    from agent.cli import app
    from agent.store import RunStore

    config, out = run_config(tmp_path, tiny_models, served_llava, llava_folder), tmp_path / "run"
    result = CliRunner().invoke(app, ["run", *PROMPTS[:2], "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["critic"] == {"path": f"{llava_folder} at {served_llava}", "hash": None}
    local = HFVLMCritic(HFVLMCriticConfig(path=str(llava_folder), max_new_tokens=400))  # the example's max_tokens
    store = RunStore.open(out)
    sessions = sorted(store.sessions(), key=lambda s: s.id)
    assert [s.prompt for s in sessions] == PROMPTS[:2] and all(s.status == "done" for s in sessions)
    for s in sessions:
        first = s.rounds[0]
        image = store.load_image(first.image)
        assert first.critique == local.critique([s.prompt], [image])[0]  # the server's model saw this image
        assert first.calls["critic"] == 1 and "from its text" in first.judge_reason
        assert first.rewards["judge"] in (0.0, 1.0)
    lines = (out / "sessions.jsonl").read_text().splitlines()
    assert [json.loads(line)["rounds"][0]["critique"] for line in lines] == [s.rounds[0].critique for s in sessions]


def readme_config() -> str:
    """The YAML block of the README's "Your own models" section."""
    readme = (CONFIGS.parent / "README.md").read_text()
    section = readme[readme.index("## Your own models"):]
    return section[section.index("```yaml\n") + len("```yaml\n"):section.index("```\n")]


@pytest.mark.slow
def test_the_readme_config_runs_with_tiny_models_in_its_places(tmp_path, served_llava, llava_folder):
    """configs/kontext-qwen-vllm.yaml (the README's worked config, verbatim) with a tiny random FLUX.1 Kontext
    folder, the tiny LLaVA behind transformers serve, and small sizes on the CPU."""
    from agent.cli import app
    from agent.store import RunStore
    from tests.tiny_checkpoints import flux_kontext

    text = (CONFIGS / "kontext-qwen-vllm.yaml").read_text()
    assert readme_config() == text
    cfg = yaml.safe_load(text)
    cfg["models"]["image"].update(path=str(flux_kontext(tmp_path / "kontext")), device="cpu", dtype="float32",
                                  steps=2, height=32, width=32, generate_args={"max_sequence_length": 32},
                                  edit_args={"max_sequence_length": 32})
    for role in ("critic", "judge"):
        cfg["models"][role].update(base_url=served_llava, model=str(llava_folder))
    config, out = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["run", "a cat wearing a red hat", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output  # task: open reads free text
    (session,) = RunStore.open(out).sessions()
    first = session.rounds[0]
    assert session.status == "done" and first.critique and first.calls["critic"] == 1 and session.family is None
    assert RunStore.open(out).load_image(first.image).shape == (32, 32, 3)  # the working size, kept
    assert "judge" in first.rewards and first.judge_reason and "verifier" not in first.rewards
    assert first.correct == (first.rewards["judge"] >= 0.5)  # no verifier: the judge says right or wrong
