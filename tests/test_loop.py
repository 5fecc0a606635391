"""The loop end to end on a tiny random generator: routing, stop reasons, records, batching.

The critic here is a test double that replays scripted reflections per prompt, so that each
path of the graph is exercised on purpose; the embedded critic is a real VLM (issue 5)."""

import asyncio
import json
import time

import pytest

from agent.runner import SessionSpec, make_runtime, run_sessions
from agent.store import RunStore
from agent.trajectory import RunManifest
from policies.stop import StopPolicy
from world import check_image

RIGHT = "seen: a circle\nwrong: nothing\nverdict: right"
ADD = "seen: nothing\nwrong: expected a circle, found none\nverdict: wrong\nedit: add a circle"


class ScriptedCritic:
    """Replays the reflections scripted for each prompt, one per call."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = {p: list(texts) for p, texts in script.items()}
        self.batches = []

    def critique(self, prompts, images):
        self.batches.append(len(prompts))
        return [self.script[p].pop(0) for p in prompts]


@pytest.fixture
def image_model(tiny_image_model):
    return tiny_image_model


def new_store(path):
    return RunStore.create(path, RunManifest(run_id="test", created_at=time.time(), seed=0, refloop_version="test"))


def test_every_path_through_the_graph(tmp_path, image_model):
    script = {
        "a circle": [RIGHT],
        "a square": [ADD, RIGHT],
        "a triangle": [ADD, ADD, ADD],
        "two circles": ["I think it looks fine"],
        "three squares": ["verdict: wrong\nedit: regenerate", RIGHT],
    }
    critic = ScriptedCritic(script)
    store = new_store(tmp_path / "run")
    rt = make_runtime(store, image_model, image_model, critic, StopPolicy(max_rounds=2),
                      verifier=lambda p, img: check_image(p, img).ok)
    specs = [SessionSpec(id=f"s{i}", prompt=p, seed=i) for i, p in enumerate(script)]
    records = {r.prompt: r for r in asyncio.run(run_sessions(rt, specs, concurrency=8))}

    expect = {"a circle": ("critic_satisfied", 1), "a square": ("critic_satisfied", 2),
              "a triangle": ("max_rounds", 3), "two circles": ("critique_unreadable", 1),
              "three squares": ("critic_satisfied", 2)}
    for prompt, (reason, n_rounds) in expect.items():
        r = records[prompt]
        assert (r.status, r.stop_reason, len(r.rounds)) == ("done", reason, n_rounds), (prompt, r.error)
        assert r.final_image == r.rounds[-1].image and store.image_path(r.final_image).is_file()
        assert all("verifier" in rnd.rewards for rnd in r.rounds)
    assert records["two circles"].rounds[0].critique_error == "no 'verdict:' line"
    square = records["a square"].rounds
    assert square[0].instruction == "add a circle" and square[1].calls == {"editor": 1, "critic": 1}
    assert records["three squares"].rounds[1].calls["generator"] == 1  # regenerate, not edit
    assert max(critic.batches) > 1  # calls of several sessions merged into one batch
    assert all(not rest for rest in critic.script.values())  # every scripted critique was asked for
    lines = store.write_jsonl().read_text().splitlines()
    assert {json.loads(line)["id"] for line in lines} == {s.id for s in specs}


def test_a_failing_model_fails_its_sessions_only(tmp_path, image_model):
    class Broken(ScriptedCritic):
        def critique(self, prompts, images):
            raise RuntimeError("critic out of memory")

    store = new_store(tmp_path / "run")
    rt = make_runtime(store, image_model, image_model, Broken({}), StopPolicy(max_rounds=1))
    records = asyncio.run(run_sessions(rt, [SessionSpec(id="a", prompt="a circle", seed=0)]))
    assert records[0].status == "failed" and "critic out of memory" in records[0].error
    assert len(records[0].rounds) == 1  # the generated image was kept


def test_models_of_this_machine_take_turns_and_a_served_one_does_not(tmp_path, image_model):
    """Roles run by this process share one turn (one batch at a time on its cores); a served critic
    runs on its server, so its batches may overlap the image model's."""
    class Served(ScriptedCritic):
        runs_here = False

    local = make_runtime(new_store(tmp_path / "a"), image_model, image_model, ScriptedCritic({}), StopPolicy())
    assert local.generator.turn is local.editor.turn is local.critic.turn is not None
    served = make_runtime(new_store(tmp_path / "b"), image_model, image_model, Served({}), StopPolicy())
    assert served.critic.turn is None and served.generator.turn is not None


def test_the_verifier_checks_the_round_while_the_critic_writes(tmp_path, image_model):
    """Ground truth is taken beside the critic's call, not on the path between two model batches: the
    critic here answers only once the verifier has begun, and the round records both."""
    import threading

    checking = threading.Event()

    class WaitingCritic:
        def critique(self, prompts, images):
            assert checking.wait(5), "the verifier did not run while the critic did"
            return [RIGHT for _ in prompts]

    def verifier(prompt, image):
        checking.set()
        return check_image(prompt, image).ok

    rt = make_runtime(new_store(tmp_path / "run"), image_model, image_model, WaitingCritic(),
                      StopPolicy(max_rounds=1), verifier=verifier)
    [record] = asyncio.run(run_sessions(rt, [SessionSpec(id="s0", prompt="a red circle", seed=0)]))
    assert record.status == "done" and record.stop_reason == "critic_satisfied"
    rnd = record.rounds[0]
    assert rnd.correct is not None and rnd.rewards["verifier"] == float(rnd.correct)


def test_a_session_whose_critic_fails_keeps_its_image_s_ground_truth(tmp_path, image_model):
    class BrokenCritic:
        def critique(self, prompts, images):
            raise RuntimeError("the critic broke")

    rt = make_runtime(new_store(tmp_path / "run"), image_model, image_model, BrokenCritic(),
                      StopPolicy(max_rounds=1), verifier=lambda p, img: check_image(p, img).ok)
    [record] = asyncio.run(run_sessions(rt, [SessionSpec(id="s0", prompt="a red circle", seed=0)]))
    assert record.status == "failed" and "the critic broke" in record.error
    assert record.rounds[0].correct is not None and "verifier" in record.rounds[0].rewards


def test_a_verifier_that_breaks_fails_its_session_and_not_the_run(tmp_path, image_model):
    def verifier(prompt, image):
        if prompt == "a square":
            raise RuntimeError("the verifier broke")
        return check_image(prompt, image).ok

    rt = make_runtime(new_store(tmp_path / "run"), image_model, image_model,
                      ScriptedCritic({"a square": [RIGHT], "a circle": [RIGHT]}), StopPolicy(max_rounds=1),
                      verifier=verifier)
    specs = [SessionSpec(id="s0", prompt="a square", seed=0), SessionSpec(id="s1", prompt="a circle", seed=1)]
    records = {r.id: r for r in asyncio.run(run_sessions(rt, specs))}
    assert records["s0"].status == "failed" and "the verifier broke" in records["s0"].error
    assert records["s0"].rounds[0].correct is None
    assert records["s1"].status == "done" and records["s1"].rounds[0].correct is not None
