"""The served backend (model/backends/served.py) against a real `transformers serve` process on a tiny
random LLaVA saved to a temp folder, offline (HF_HUB_OFFLINE=1). No stand-ins: the server is
transformers' own OpenAI-compatible server, and the local transformers critic on the same folder
says what the server's model must answer (greedy decoding, so the texts are equal).

`transformers serve` ignores `logprobs` (it is in its list of unsupported fields), so against it the
judge takes its documented fallback, 1.0/0.0 from the answer's text; the logprobs arithmetic is
checked on a response in the shape vLLM returns."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from model.backends.hf_vlm import HFVLMCritic, HFVLMCriticConfig
from model.backends.served import (
    ServedCritic,
    ServedCriticConfig,
    ServedJudge,
    ServedJudgeConfig,
    word,
    yes_probability,
)
from model.backends.served_client import ServedModelError

PROMPTS = ["two red circles above a blue square", "a green triangle", "a cat wearing a red hat",
           "one blue square", "a red circle left of a green circle"]
IMAGES = [np.full((64, 64, 3), 50 * k, np.uint8) for k in range(len(PROMPTS))]  # plain greys: different answers
SERVERS = ["vllm", "sglang", "ollama", "lmstudio", "transformers"]
CONFIGS = Path(__file__).parents[1] / "configs"
REFLECTION = "seen: a red circle\nwrong: the square is missing\nverdict: wrong\nedit: add a blue square"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    from tests.test_backends import llava

    return llava(tmp_path_factory.mktemp("served") / "llava")


@pytest.fixture(scope="module")
def server(llava_folder, tmp_path_factory):
    """`transformers serve FOLDER` in a child process, pinned to the folder; yields its /v1 URL."""
    port, log = free_port(), tmp_path_factory.mktemp("serve-log") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", str(llava_folder),
                                 "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not answer /health in 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def local(llava_folder):
    """The same folder through the local transformers critic: what the server's model must say."""
    return HFVLMCritic(HFVLMCriticConfig(path=str(llava_folder), max_new_tokens=8))


def critic_config(server, folder, **kwargs) -> ServedCriticConfig:
    return ServedCriticConfig(base_url=server, model=str(folder), max_tokens=8, **kwargs)


@pytest.mark.slow
def test_a_batch_goes_concurrently_bounded_and_answers_as_the_local_model(server, llava_folder, local):
    critic = ServedCritic(critic_config(server, llava_folder, max_in_flight=2))
    texts = critic.critique(PROMPTS, IMAGES)
    assert texts == local.critique(PROMPTS, IMAGES)
    assert len(set(texts)) > 1  # the rows are not one answer repeated
    stats = critic.server.stats
    assert stats["requests"] == len(PROMPTS) and stats["peak_in_flight"] == 2  # concurrent, never above the bound
    assert critic.server.listed == [str(llava_folder)]  # the pinned model, as its /v1/models lists it


@pytest.mark.slow
def test_history_is_sent_as_a_multi_image_conversation(server, llava_folder, local):
    critic = ServedCritic(critic_config(server, llava_folder, max_in_flight=1))
    history = [[(IMAGES[1], REFLECTION), (IMAGES[2], "seen: nothing\nverdict: wrong\nedit: regenerate")], []]
    texts = critic.critique(PROMPTS[:2], IMAGES[:2], history)
    assert texts == local.critique(PROMPTS[:2], IMAGES[:2], history)
    assert texts[1] == local.critique(PROMPTS[1:2], IMAGES[1:2])[0]  # an empty history is no history
    # the server read exactly the conversation the local processor builds: three images, two reflections
    expected = sum(len(local.inputs([p], [i], [h])["input_ids"][0]) for p, i, h in zip(PROMPTS, IMAGES, history))
    assert critic.server.stats["prompt_tokens"] == expected
    alone = len(local.inputs(PROMPTS[:1], IMAGES[:1])["input_ids"][0])
    assert len(local.inputs(PROMPTS[:1], IMAGES[:1], history[:1])["input_ids"][0]) > alone + 3 * 16  # 2 more images
    messages = critic.messages(PROMPTS[0], IMAGES[0], history[0])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == REFLECTION and messages[0]["content"][0]["image_url"]["url"].startswith(
        "data:image/png;base64,")


@pytest.mark.slow
def test_judge_without_logprobs_scores_from_the_answer_and_says_so(server, llava_folder):
    judge = ServedJudge(ServedJudgeConfig(base_url=server, model=str(llava_folder)))
    scores = judge.score(PROMPTS[:2], IMAGES[:2])
    assert scores == [0.0, 0.0] and judge.scored_by == {"text": 2}  # a random model does not say yes
    assert all("from its text" in s.reason for s in scores)
    # the model's own first answer token (greedy, as the local model says it), counted as yes, scores 1.0
    asker = HFVLMCritic(HFVLMCriticConfig(path=str(llava_folder), template=judge.cfg.template, max_new_tokens=1))
    said = asker.critique(PROMPTS[:1], IMAGES[:1])[0]
    assert word(said) not in ("", "yes", "no")
    yes = ServedJudge(ServedJudgeConfig(base_url=server, model=str(llava_folder), yes_words=[said], no_words=["no"]))
    assert yes.score(PROMPTS[:1], IMAGES[:1]) == [1.0]
    strict = ServedJudge(ServedJudgeConfig(base_url=server, model=str(llava_folder), require_logprobs=True))
    with pytest.raises(ServedModelError, match="returned no logprobs.*require_logprobs: false"):
        strict.score(PROMPTS[:1], IMAGES[:1])


def test_yes_probability_from_top_logprobs_as_vllm_returns_them():
    """P(yes) = the yes tokens' mass over the yes and no tokens' among the first token's alternatives."""
    from openai.types.chat import ChatCompletion

    top = [("Yes", -0.2), ("No", -1.9), (" yes", -3.0), ("The", -4.0), ("NO", -5.0)]
    reply = ChatCompletion.model_validate({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "Yes"},
                     "logprobs": {"content": [{"token": "Yes", "logprob": -0.2, "bytes": None, "top_logprobs": [
                         {"token": t, "logprob": lp, "bytes": None} for t, lp in top]}]}}]})
    p_yes, p_no = np.exp(-0.2) + np.exp(-3.0), np.exp(-1.9) + np.exp(-5.0)
    assert yes_probability(reply.choices[0], {"yes"}, {"no"}) == pytest.approx(p_yes / (p_yes + p_no))
    assert yes_probability(reply.choices[0], {"oui"}, {"non"}) is None  # neither word: the text fallback
    no_logprobs = reply.model_copy(update={"choices": [reply.choices[0].model_copy(update={"logprobs": None})]})
    assert yes_probability(no_logprobs.choices[0], {"yes"}, {"no"}) is None


def test_config_never_holds_the_key_and_names_an_http_url(monkeypatch):
    with pytest.raises(ValueError, match="not the key itself"):
        ServedCriticConfig(base_url="http://h:1/v1", model="m", api_key_env="sk-abc123")
    with pytest.raises(ValueError, match="not an http"):
        ServedCriticConfig(base_url="localhost:8000/v1", model="m")
    monkeypatch.delenv("REFLOOP_TEST_KEY", raising=False)
    with pytest.raises(ServedModelError, match="REFLOOP_TEST_KEY, which is not set"):
        ServedCritic(ServedCriticConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="REFLOOP_TEST_KEY"))


def test_a_dead_url_is_one_line_that_names_it_and_the_fix():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(ServedModelError) as e:
        ServedCritic(ServedCriticConfig(base_url=url, model="m", retries=0))
    assert str(e.value).startswith(f"cannot reach the served critic at {url}") and "\n" not in str(e.value)
    assert "start the server or fix models.critic.base_url" in str(e.value)


@pytest.mark.slow
def test_a_server_root_without_v1_is_named(server):
    root = server.removesuffix("/v1")
    with pytest.raises(ServedModelError, match=f"{root} answered HTTP 404.*ends with /v1"):
        ServedJudge(ServedJudgeConfig(base_url=root, model="m"))


# ---- `refloop run` with the served critic and judge ----

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
def test_run_with_the_served_critic_and_judge_logs_the_trajectory(tmp_path, tiny_models, server, llava_folder):
    from agent.cli import app
    from agent.store import RunStore

    config, out = run_config(tmp_path, tiny_models, server, llava_folder), tmp_path / "run"
    result = CliRunner().invoke(app, ["run", *PROMPTS[:2], "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["critic"] == {"path": f"{llava_folder} at {server}", "hash": None}
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
