"""stop.final: a session may end on the round its judge scored highest instead of its last, and
Acc@final, flips and the viewer then read that round. The unified critic and judge of one run
reflect on an image once between them."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from agent.config import RunConfig
from agent.metrics import flips, metrics
from agent.runner import SessionSpec, make_runtime, run_sessions
from policies.stop import StopPolicy
from tests.test_search import ADD, Critic, StampModel, new_store, seed_of


class RoundJudge:
    """Scores an image by its round (its seed minus the session's, 7): `scores[round]`."""

    def __init__(self, scores: dict[int, float]):
        self.scores = scores

    def score(self, prompts, images):
        return [self.scores[seed_of(img) - 7] for img in images]


def session(tmp_path, final: str):
    store = new_store(tmp_path / final)
    rt = make_runtime(store, StampModel(), StampModel(), Critic({"a circle": [ADD] * 3}),
                      StopPolicy(max_rounds=2, final=final), judge=RoundJudge({0: 0.9, 1: 0.2, 2: 0.5}),
                      verifier=lambda prompt, image: seed_of(image) == 7)  # only round 0 is right
    [record] = asyncio.run(run_sessions(rt, [SessionSpec(id="s0", prompt="a circle", seed=7)]))
    return store, record


@pytest.mark.parametrize("final", ["last", "best"])
def test_a_session_ends_on_its_last_round_or_the_one_its_judge_scored_highest(tmp_path, final):
    store, r = session(tmp_path, final)
    assert (r.stop_reason, len(r.rounds)) == ("max_rounds", 3), r.error
    assert [x.correct for x in r.rounds] == [True, False, False]
    ended = 0 if final == "best" else 2
    assert r.final_image == r.rounds[ended].image and r.final_round.index == ended
    assert seed_of(store.load_image(r.final_image)) == 7 + ended
    m = metrics([r])
    assert (m.acc_final, m.c_to_i) == ((1.0, 0.0) if final == "best" else (0.0, 1.0))
    assert bool(flips([r])["right -> wrong"]) == (final == "last")


def test_the_best_round_is_the_latest_of_equal_scores_and_needs_every_round_scored():
    best = StopPolicy(final="best")
    assert best.final_round([0.2, 0.9, 0.9], last=2) == 2
    assert best.final_round([0.9, 0.2], last=1) == 0
    assert best.final_round([0.9], last=1) == 1  # not every round scored: the last
    assert StopPolicy().final_round([0.9, 0.2], last=1) == 1


def test_final_best_without_a_judge_is_a_config_error():
    with pytest.raises(ValidationError, match="stop.final 'best'"):
        RunConfig.model_validate({"stop": {"final": "best"}})
    RunConfig.model_validate({"stop": {"final": "best"}, "search": {"judge": "verifier"}})
    shipped = yaml.safe_load((Path(__file__).parents[1] / "configs" / "keep-best.yaml").read_text())
    assert RunConfig.model_validate(shipped).stop.final == "best"


def test_the_embedded_critic_keeps_the_best_round_unless_told_otherwise():
    """Default: the unified critic's settings judge every round and the best one is kept; saying any of
    stop.final, search.judge or models.judge, or another critic, keeps what was said."""
    cfg = RunConfig()
    assert (cfg.stop.final, cfg.search.judge, cfg.models.judge) == ("best", "model", cfg.models.critic)
    assert RunConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # a run manifest reloads as it was
    votes = RunConfig.model_validate({"models": {"critic": {"kind": "unified", "verdict_votes": 4}}})
    assert votes.models.judge.verdict_votes == 4 and votes.stop.final == "best"
    for said in ({"stop": {"final": "last"}}, {"search": {"judge": "verifier"}},
                 {"models": {"critic": {"kind": "served", "base_url": "http://localhost:1", "model": "m"}}}):
        other = RunConfig.model_validate(said)
        assert other.stop.final == "last" and other.models.judge is None, said
    assert RunConfig.model_validate({"search": {"judge": "verifier"}}).search.judge == "verifier"


def test_the_unified_critic_and_judge_reflect_on_an_image_once(tiny_models):
    from model.unified.backend import UnifiedRoles
    from model.unified.config import UnifiedBackendConfig

    critic = UnifiedRoles(UnifiedBackendConfig(path=str(tiny_models / "unified")))
    judge = UnifiedRoles(UnifiedBackendConfig(path=str(tiny_models / "unified")))
    rows = []
    reflect = critic.model.reflect
    critic.model.reflect = lambda prompts, images: rows.append(len(prompts)) or reflect(prompts, images)
    try:
        images = [np.full((64, 64, 3), 255, np.uint8), np.zeros((64, 64, 3), np.uint8)]
        texts = critic.critique(["a red circle", "a red circle"], images)
        scores = judge.score(["a red circle", "a blue square", "a red circle"], [images[0], images[0], images[1]])
        assert rows == [2, 1]  # the judge's call reflected on the one new (prompt, image) only
        assert critic.critique(["a red circle"], images[1:]) == texts[1:] and rows == [2, 1]
        assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)
        judge.forget()  # one memory per model: a timing (bench --perf) starts without it
        assert critic.critique(["a red circle"], images[1:]) == texts[1:] and rows == [2, 1, 1]
    finally:
        critic.model.reflect = reflect
