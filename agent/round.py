"""The round in flight: what one round of a session gathers in the graph state before the store
records it.

A round is made (one image, or several candidates the judge picks from), critiqued (by the critic,
and maybe edited by a person), and finished when the loop moves on to the next round or stops;
only then does the store write its RoundRecord, once. Until then the round lives in the graph
state (LoopState.round, a RoundRecord as a plain dict, checkpointed with the rest of the state), so
a killed run resumes with it and a session paused for review holds it there. Pixels are files from
the start: each image is put in the run directory when it is made (content-addressed, so a node
re-run after a crash puts the same pixels at the same path) and the round holds their paths.
These functions build the record step by step; the graph's nodes call them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from agent.trajectory import RoundRecord
from policies.critique import Critique, CritiqueError
from policies.search import pick


class Candidate(BaseModel):
    """One image a branch made, with the judge's word on it (a plain dict in the state)."""

    round: int
    index: int
    image: str  # relative to the run directory
    role: Literal["generate", "edit"]
    seconds: float
    score: float | None = None  # None without a judge
    reason: str | None = None
    judge_seconds: float = 0.0


def kept(candidates: list[Candidate], judged: bool) -> Candidate:
    """The candidate the round keeps: the judge's pick, or the only one."""
    candidates = sorted(candidates, key=lambda c: c.index)
    return candidates[pick([c.score for c in candidates])] if judged else candidates[0]


def made(candidates: list[Candidate], best: Candidate, judged: bool, correct: bool | None) -> RoundRecord:
    """The round as made, with `best` as its image; every model call is counted. `correct` is the
    judge's verdict (or None): a verifier's comes with the critique (`verified`)."""
    candidates = sorted(candidates, key=lambda c: c.index)
    rewards = {}
    timings = {best.role: max(c.seconds for c in candidates)}  # branches run side by side
    calls = {"generator" if best.role == "generate" else "editor": len(candidates)}
    if judged:
        rewards["judge"] = best.score
        timings["judge"], calls["judge"] = max(c.judge_seconds for c in candidates), len(candidates)
    wide = len(candidates) > 1
    return RoundRecord(index=best.round, image=best.image, rewards=rewards, correct=correct, timings=timings,
                       calls=calls, candidates=[c.image for c in candidates] if wide else [],
                       candidate_scores=[c.score for c in candidates] if wide and judged else [],
                       judge_reason=best.reason or None)


def verified(rnd: RoundRecord, ok: bool) -> RoundRecord:
    """The round with the verifier's ground truth: recorded as `correct` and as a reward."""
    return rnd.model_copy(update={"correct": ok, "rewards": {"verifier": float(ok), **rnd.rewards}})


def critiqued(rnd: RoundRecord, text: str, seconds: float, parse: Callable[[str], Critique]) -> RoundRecord:
    """The round with the critic's reflection; a text that does not parse is recorded with why."""
    verdict = instruction = error = None
    try:
        parsed = parse(text)
        verdict, instruction = parsed.verdict, parsed.instruction
    except CritiqueError as e:
        error = str(e)
    return rnd.model_copy(update={
        "critique": text, "verdict": verdict, "instruction": instruction, "critique_error": error,
        "critique_by": "model", "timings": {**rnd.timings, "critique": seconds}, "calls": {**rnd.calls, "critic": 1}})


def by_person(rnd: RoundRecord, text: str, parsed: Critique) -> RoundRecord:
    """The round with a person's reflection in place of the critic's (run --review, replay --critique)."""
    return rnd.model_copy(update={"critique": text.strip(), "verdict": parsed.verdict,
                                  "instruction": parsed.instruction, "critique_error": None, "critique_by": "human"})
