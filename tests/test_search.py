"""Search in the loop: best-of-N first generations and K candidate edits per revision, fanned out
with LangGraph `Send` and picked by a judge.

The generator and editor here are test doubles that stamp each image with the seed it was made
from (and an edit with its source's seed too), so a test can tell from the pixels which candidate
of which round an image is; the judge is scripted by candidate index. The tiny neural pipeline
runs the same graph in tests/test_loop.py and tests/test_bench.py."""

import asyncio
import threading
import time

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from agent.config import RunConfig
from agent.graph import build_graph
from agent.runner import SessionSpec, make_judge, make_runtime, run_sessions
from agent.store import RunStore
from agent.trajectory import RunManifest
from policies.search import SEED_STRIDE, SearchPolicy, candidate_seed, pick
from policies.stop import StopPolicy
from rewards.base import Scored, as_scored
from rewards.verifier import VerifierReward
from world import check_image, parse_prompt, render_one, scene_for_prompt

RIGHT = "verdict: right"
ADD = "verdict: wrong\nedit: add a circle"
REGENERATE = "verdict: wrong\nedit: regenerate"


def stamp(image: np.ndarray, row: int, seed: int) -> np.ndarray:
    image[row, :8, 0] = np.frombuffer(np.int64(seed).tobytes(), np.uint8)
    return image


def seed_of(image: np.ndarray, row: int = 0) -> int:
    return int(np.frombuffer(np.ascontiguousarray(image[row, :8, 0]).tobytes(), np.int64)[0])


class StampModel:
    """Generator and editor: a white image stamped with its seed (row 0); an edit keeps its source's
    seed in row 1. `block_at` makes the n-th generated image wait for `release` (an interruption)."""

    def __init__(self, block_at: int | None = None):
        self.generated, self.edited, self.batches = [], [], []
        self.block_at, self.reached, self.release = block_at, threading.Event(), threading.Event()

    def generate(self, prompts, seeds):
        self.batches.append(len(seeds))
        out = []
        for seed in seeds:
            self.generated.append(seed)
            if len(self.generated) == self.block_at:
                self.reached.set()
                self.release.wait(30)
            out.append(stamp(np.full((64, 64, 3), 255, np.uint8), 0, seed))
        return out

    def edit(self, images, instructions, seeds):
        self.edited += list(seeds)
        return [stamp(stamp(img.copy(), 1, seed_of(img)), 0, seed) for img, seed in zip(images, seeds)]


class IndexJudge:
    """Scores an image by the candidate index its seed says it is: `scores[index]`."""

    def __init__(self, scores: dict[int, float]):
        self.scores, self.seen = scores, []

    def score(self, prompts, images):
        indices = [seed_of(img) // SEED_STRIDE for img in images]
        self.seen += indices
        return [Scored(value=self.scores[k], reason=f"candidate {k}") for k in indices]


class ServedIndexJudge(IndexJudge):
    """The same judge on a server of its own: it scores while this machine's generator is busy
    (a judge run here would wait for the generator's turn, so no branch would finish first)."""

    runs_here = False


class Critic:
    """Replays scripted reflections per prompt, one per call."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = {p: list(t) for p, t in script.items()}

    def critique(self, prompts, images):
        return [self.script[p].pop(0) for p in prompts]


def new_store(path):
    return RunStore.create(path, RunManifest(run_id="test", created_at=time.time(), seed=0, refloop_version="test"))


def run(store, model, critic, judge, search, max_rounds=0, specs=None, max_batch=32):
    rt = make_runtime(store, model, model, critic, StopPolicy(max_rounds=max_rounds), judge=judge,
                      max_batch=max_batch, search=search)
    specs = specs or [SessionSpec(id="s0", prompt="a circle", seed=7)]
    return asyncio.run(run_sessions(rt, specs))


def test_best_of_keeps_the_candidate_the_judge_scores_highest(tmp_path):
    store, model = new_store(tmp_path / "run"), StampModel()
    judge = IndexJudge({0: 0.1, 1: 0.5, 2: 0.9, 3: 0.5})
    [r] = run(store, model, Critic({"a circle": [RIGHT]}), judge, SearchPolicy(best_of=4, judge="verifier"))
    assert (r.status, r.stop_reason, len(r.rounds)) == ("done", "critic_satisfied", 1), r.error
    rnd = r.rounds[0]
    assert [seed_of(store.load_image(c)) for c in rnd.candidates] == [candidate_seed(7, k) for k in range(4)]
    assert rnd.image == rnd.candidates[2] and r.final_image == rnd.candidates[2]
    assert rnd.candidate_scores == [0.1, 0.5, 0.9, 0.5]
    assert rnd.rewards == {"judge": 0.9} and rnd.judge_reason == "candidate 2"
    assert rnd.calls == {"generator": 4, "judge": 4, "critic": 1}
    assert model.batches == [4]  # the four branches ran in one super-step: one batched generator call
    assert sorted(judge.seen) == [0, 1, 2, 3]


def test_ties_go_to_the_lowest_index(tmp_path):
    assert pick([0.2, 0.7, 0.7]) == 1 and pick([0.0]) == 0 and pick([0.5, 0.5, 0.9, 0.9]) == 2
    with pytest.raises(ValueError):
        pick([])
    store = new_store(tmp_path / "run")
    [r] = run(store, StampModel(), Critic({"a circle": [RIGHT]}), IndexJudge({0: 0.3, 1: 0.3, 2: 0.3}),
              SearchPolicy(best_of=3, judge="verifier"))
    assert r.rounds[0].image == r.rounds[0].candidates[0]


def test_k_candidate_revisions_edit_the_kept_image(tmp_path):
    store, model = new_store(tmp_path / "run"), StampModel()
    judge = IndexJudge({0: 0.2, 1: 0.8, 2: 0.3})
    critic = Critic({"a circle": [ADD, REGENERATE, ADD]})
    [r] = run(store, model, critic, judge, SearchPolicy(revisions=3, judge="verifier"), max_rounds=2)
    assert (r.stop_reason, len(r.rounds)) == ("max_rounds", 3), r.error
    first, edit, again = r.rounds
    assert first.candidates == [] and seed_of(store.load_image(first.image)) == 7  # one candidate: as without search
    assert first.calls == {"generator": 1, "judge": 1, "critic": 1} and first.rewards == {"judge": 0.2}
    # revision 1: three edits of round 0's image, seeds from seed + 1; candidate 1 is kept
    kept = store.load_image(edit.image)
    assert edit.image == edit.candidates[1] and len(edit.candidates) == 3
    assert seed_of(kept) == candidate_seed(8, 1) and seed_of(kept, row=1) == 7
    assert edit.calls == {"editor": 3, "judge": 3, "critic": 1} and edit.candidate_scores == [0.2, 0.8, 0.3]
    assert set(edit.timings) == {"edit", "judge", "critique"}
    # revision 2 asked to start over: three generations from seed + 2
    assert again.calls == {"generator": 3, "judge": 3, "critic": 1}
    assert [seed_of(store.load_image(c)) for c in again.candidates] == [candidate_seed(9, k) for k in range(3)]
    assert sorted(model.edited) == [candidate_seed(8, k) for k in range(3)]  # branches call in any order
    assert not any(critic.script.values())


def test_search_bounds_hold_over_many_wide_rounds(tmp_path):
    """Every round fanned out (two extra super-steps each) still fits the derived recursion limit."""
    store = new_store(tmp_path / "run")
    [r] = run(store, StampModel(), Critic({"a circle": [ADD] * 5}), IndexJudge({0: 0.1, 1: 0.2}),
              SearchPolicy(best_of=2, revisions=2, judge="verifier"), max_rounds=4)
    assert (r.status, r.stop_reason, len(r.rounds)) == ("done", "max_rounds", 5), r.error
    assert [x.index for x in r.rounds] == [0, 1, 2, 3, 4]
    assert all(len(x.candidates) == 2 and x.image == x.candidates[1] for x in r.rounds)
    assert sum(x.calls.get("generator", 0) + x.calls.get("editor", 0) for x in r.rounds) == 10


def test_plain_loop_has_no_search_fields(tmp_path):
    store, model = new_store(tmp_path / "run"), StampModel()
    [r] = run(store, model, Critic({"a circle": [ADD, RIGHT]}), None, SearchPolicy(), max_rounds=2)
    assert [x.calls for x in r.rounds] == [{"generator": 1, "critic": 1}, {"editor": 1, "critic": 1}]
    assert all(x.candidates == [] and x.candidate_scores == [] and x.judge_reason is None and x.rewards == {}
               for x in r.rounds)
    assert model.generated == [7] and model.edited == [8]


def test_a_failing_judge_fails_its_session(tmp_path):
    class Broken:
        def score(self, prompts, images):
            raise RuntimeError("judge out of memory")

    store = new_store(tmp_path / "run")
    [r] = run(store, StampModel(), Critic({}), Broken(), SearchPolicy(best_of=2, judge="verifier"))
    assert r.status == "failed" and "judge out of memory" in r.error and r.rounds == []


def test_resume_after_an_interruption_during_the_fan_out(tmp_path):
    """Cancel the run while candidate 2 of 3 is being generated (as a kill would stop it), then
    resume: the finished candidates are not made again, nothing is duplicated, and the session
    ends exactly as an uninterrupted one."""
    search, judge = SearchPolicy(best_of=3, judge="verifier"), ServedIndexJudge({0: 0.4, 1: 0.6, 2: 0.5})
    store, blocked = new_store(tmp_path / "run"), StampModel(block_at=3)
    spec = SessionSpec(id="s0", prompt="a circle", seed=7)

    async def interrupt_then_resume():
        rt = make_runtime(store, blocked, blocked, Critic({}), StopPolicy(max_rounds=0), judge=judge,
                          max_batch=1, search=search)
        task = asyncio.create_task(run_sessions(rt, [spec]))
        while not blocked.reached.is_set() or len(judge.seen) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the checkpointer saves the two finished branches' writes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        blocked.release.set()
        assert store.get("s0").rounds == []  # nothing recorded mid-fan-out
        again = StampModel()
        rt = make_runtime(store, again, again, Critic({"a circle": [RIGHT]}), StopPolicy(max_rounds=0),
                          judge=judge, max_batch=1, search=search)
        [record] = await run_sessions(rt, [spec])
        return record, again

    record, again = asyncio.run(interrupt_then_resume())
    assert again.generated == [candidate_seed(7, 2)]  # only the unfinished branch ran again
    reference = new_store(tmp_path / "reference")
    [expected] = run(reference, StampModel(), Critic({"a circle": [RIGHT]}), IndexJudge(judge.scores), search)
    assert record.status == "done" and len(record.rounds) == 1
    drop = {"timings"}
    assert record.rounds[0].model_dump(exclude=drop) == expected.rounds[0].model_dump(exclude=drop)
    assert record.rounds[0].image == record.rounds[0].candidates[1]


def test_a_search_needs_a_judge(tmp_path):
    with pytest.raises(ValidationError, match="needs a judge"):
        SearchPolicy(best_of=2)
    with pytest.raises(ValidationError):
        SearchPolicy(best_of=0, judge="verifier")
    with pytest.raises(ValidationError):
        SearchPolicy(judge="oracle")
    model = StampModel()
    rt = make_runtime(new_store(tmp_path / "run"), model, model, Critic({}), StopPolicy(),
                      search=SearchPolicy.model_construct(best_of=2, revisions=1, judge=None))
    with pytest.raises(ValueError, match="needs a judge"):
        build_graph(rt)


def test_recursion_limit_grows_with_fanned_out_rounds(tmp_path):
    model, store, plain = StampModel(), new_store(tmp_path / "run"), StopPolicy(max_rounds=4).recursion_limit

    def limit(search):
        return make_runtime(store, model, model, Critic({}), StopPolicy(max_rounds=4), search=search).recursion_limit

    assert limit(SearchPolicy()) == plain
    assert limit(SearchPolicy(best_of=3, judge="verifier")) == plain + 2  # candidate + pick, once
    assert limit(SearchPolicy(best_of=2, revisions=2, judge="verifier")) == plain + 2 * 5  # every round


def test_verifier_reward_is_the_exact_verdict():
    rng = np.random.default_rng(0)
    image = render_one(scene_for_prompt(parse_prompt("two red circles"), rng))
    right, wrong = VerifierReward(check_image).score(["two red circles", "three red circles"], [image, image])
    assert right.value == 1.0 and wrong.value == 0.0
    assert wrong.reason == "expected three red circles, found two"
    with pytest.raises(ValueError):
        VerifierReward(check_image).score(["a circle"], [])
    with pytest.raises(ValidationError):
        Scored(value=float("nan"), reason="x")
    assert as_scored(0.25) == Scored(value=0.25, reason="") and as_scored(right) is right


def test_run_config_takes_a_search_and_builds_its_judge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"search": {"best_of": 3, "judge": "verifier"}}))
    cfg = RunConfig.load(path)
    assert cfg.search == SearchPolicy(best_of=3, judge="verifier")
    assert isinstance(make_judge(cfg), VerifierReward)
    assert make_judge(RunConfig.model_validate({"stop": {"final": "last"}})) is None
    path.write_text(yaml.safe_dump({"search": {"best_of": 3, "judge": "model"}}))
    with pytest.raises(ValueError, match="models.judge"):
        RunConfig.load(path)
    path.write_text(yaml.safe_dump({"search": {"best_of": 3, "judge": "verifier", "width": 2}}))
    with pytest.raises(ValueError, match="search.width"):
        RunConfig.load(path)
