"""The served backend (model/backends/served.py) against a real `transformers serve` process on a tiny
random LLaVA saved to a temp folder, offline (HF_HUB_OFFLINE=1). No stand-ins: the server is
transformers' own OpenAI-compatible server, and the local transformers critic on the same folder
says what the server's model must answer (greedy decoding, so the texts are equal).

`transformers serve` ignores `logprobs` (it is in its list of unsupported fields), so against it the
judge takes its documented fallback, 1.0/0.0 from the answer's text; the logprobs arithmetic is
checked on a response in the shape vLLM returns."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

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
from tests.served_server import free_port

PROMPTS = ["two red circles above a blue square", "a green triangle", "a cat wearing a red hat",
           "one blue square", "a red circle left of a green circle"]
IMAGES = [np.full((64, 64, 3), 50 * k, np.uint8) for k in range(len(PROMPTS))]  # plain greys: different answers
REFLECTION = "seen: a red circle\nwrong: the square is missing\nverdict: wrong\nedit: add a blue square"


@pytest.fixture(scope="module")
def local(llava_folder):
    """The same folder through the local transformers critic: what the server's model must say."""
    return HFVLMCritic(HFVLMCriticConfig(path=str(llava_folder), max_new_tokens=8))


def critic_config(url, folder, **kwargs) -> ServedCriticConfig:
    return ServedCriticConfig(base_url=url, model=str(folder), max_tokens=8, **kwargs)


@pytest.mark.slow
def test_a_batch_goes_concurrently_bounded_and_answers_as_the_local_model(served_llava, llava_folder, local):
    critic = ServedCritic(critic_config(served_llava, llava_folder, max_in_flight=2))
    texts = critic.critique(PROMPTS, IMAGES)
    assert texts == local.critique(PROMPTS, IMAGES)
    assert len(set(texts)) > 1  # the rows are not one answer repeated
    stats = critic.server.stats
    assert stats["requests"] == len(PROMPTS) and stats["peak_in_flight"] == 2  # concurrent, never above the bound
    assert critic.server.listed == [str(llava_folder)]  # the pinned model, as its /v1/models lists it


@pytest.mark.slow
def test_history_is_sent_as_a_multi_image_conversation(served_llava, llava_folder, local):
    critic = ServedCritic(critic_config(served_llava, llava_folder, max_in_flight=1))
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
def test_judge_without_logprobs_scores_from_the_answer_and_says_so(served_llava, llava_folder):
    judge = ServedJudge(ServedJudgeConfig(base_url=served_llava, model=str(llava_folder)))
    scores = judge.score(PROMPTS[:2], IMAGES[:2])
    assert scores == [0.0, 0.0] and judge.scored_by == {"text": 2}  # a random model does not say yes
    assert all("from its text" in s.reason for s in scores)
    # the model's own first answer token (greedy, as the local model says it), counted as yes, scores 1.0
    asker = HFVLMCritic(HFVLMCriticConfig(path=str(llava_folder), template=judge.cfg.template, max_new_tokens=1))
    said = asker.critique(PROMPTS[:1], IMAGES[:1])[0]
    assert word(said) not in ("", "yes", "no")
    yes = ServedJudge(ServedJudgeConfig(base_url=served_llava, model=str(llava_folder), yes_words=[said]))
    assert yes.score(PROMPTS[:1], IMAGES[:1]) == [1.0]
    strict = ServedJudge(ServedJudgeConfig(base_url=served_llava, model=str(llava_folder), require_logprobs=True))
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


def test_a_web_server_that_is_not_openai_is_named(tmp_path):
    """A real HTTP server (python -m http.server) whose /v1/models is a web page, not the API's JSON."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text("<html>hello</html>")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(100):
            try:
                httpx.get(url + "/models", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        with pytest.raises(ServedModelError) as e:
            ServedCritic(ServedCriticConfig(base_url=url, model="m", retries=0))
        assert str(e.value) == (f"the server at {url} answered /models with something that is not the OpenAI "
                                "API's answer (application/octet-stream: '<html>hello</html>'); check that "
                                "models.critic.base_url is the /v1 root of an OpenAI-compatible server")
    finally:
        proc.terminate()
        proc.wait()


@pytest.mark.slow
def test_a_model_the_server_does_not_serve_is_named_at_load(served_llava):
    with pytest.raises(ServedModelError, match="answered HTTP 400 \\(Server is pinned to .*models.critic.model 'm'"):
        ServedCritic(ServedCriticConfig(base_url=served_llava, model="m"))


@pytest.mark.slow
def test_a_server_root_without_v1_is_named(served_llava):
    root = served_llava.removesuffix("/v1")
    with pytest.raises(ServedModelError, match=f"{root} answered HTTP 404.*ends with /v1"):
        ServedJudge(ServedJudgeConfig(base_url=root, model="m"))
