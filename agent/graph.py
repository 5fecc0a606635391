"""The reflection loop as a LangGraph state machine.

    generate -> critique -> (stop? finish : [review ->] revise -> critique -> ...)

With human review, the `review` node asks a person about each critique before its revision with
LangGraph's `interrupt()`; the runner answers with `Command(resume=...)` (agent/review.py).

State holds paths and small values only; pixels are files in the run store from when they are
made. The round in flight lives in the state (`LoopState.round`, agent/round.py) until it is
finished: `revise` writes it to the store as it opens the next round, `finish` as the session
stops (the runner, as far as it got, when the session fails), so the store records finished
rounds, once each (a node re-run after a crash overwrites its own write). The critique node
decides whether to stop, so every stop has its reason in the state.

Search (policies/search.py) widens a round: `generate` or `revise` plans k candidates and fans
them out with `Send` to `candidate` branches (one super-step, so the model workers batch them),
and `pick` keeps the one the judge scores highest:

    generate|revise -> candidate x k -> pick -> critique

A round of one candidate is made inside `generate` / `revise` themselves, exactly as without search.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from langgraph.graph import END, START, StateGraph
from langgraph.types import Overwrite, Send, interrupt
from pydantic import BaseModel

from agent.round import Candidate, by_person, critiqued, kept, made, verified
from agent.store import RunStore
from agent.trajectory import RoundRecord
from model.worker import BatchedWorker, Crowd
from policies.critique import REGENERATE, Critique, parse_critique
from policies.search import SearchPolicy, candidate_seed
from policies.stop import StopPolicy
from rewards.base import as_scored
from tasks.base import Task


class CandidateTask(BaseModel):
    """What one candidate branch makes. Sent as a plain dict: Send arguments are checkpointed."""

    round: int
    index: int
    seed: int
    prompt: str
    session_id: str | None = None  # for the editor's view of earlier rounds (history)
    instruction: str | None = None  # None: generate from the prompt; else edit `source`
    source: str | None = None


class LoopState(BaseModel):
    session_id: str
    prompt: str
    seed: int
    revisions: int = 0  # revisions made so far; the round in flight is round `revisions`
    round: dict | None = None  # the round in flight, a RoundRecord as a dict (agent/round.py)
    scores: list[float] = []  # the judge's score of each round, when there is a judge
    stop_reason: str | None = None
    tasks: list[dict] = []  # the round being fanned out, one CandidateTask per branch
    candidates: Annotated[list[dict], operator.add] = []  # what the branches made (fan-in)

    @property
    def current(self) -> RoundRecord:
        """The round in flight (its image is the session's current image)."""
        return RoundRecord.model_validate(self.round)


@dataclass
class Runtime:
    """What the nodes need beside the state: models behind batched workers, the store, the policy.
    `verifier` (prompt, image) -> bool gives ground truth where it exists (ShapeWorld): it is
    recorded as a reward and never steers the loop. `task` reads the critiques (its instruction
    check); without a verifier, a task makes the judge's score (when there is a judge) each round's
    ground truth. `history` earlier rounds go to the critic (and an editor that takes them)."""

    store: RunStore
    generator: BatchedWorker  # (prompt, seed) -> image
    editor: BatchedWorker  # (image, instruction, seed, prompt, history or None) -> image
    critic: BatchedWorker  # (prompt, image, history or None) -> text
    policy: StopPolicy
    judge: BatchedWorker | None = None  # (prompt, image) -> Scored (rewards.base) or a float in [0, 1]
    verifier: Callable[[str, np.ndarray], bool] | None = None
    search: SearchPolicy = field(default_factory=SearchPolicy)
    crowd: Crowd | None = None  # the sessions in flight, shared with the workers (full batches, no timer)
    task: Task | None = None  # None: the general critique format, no instruction check
    history: int = 0  # earlier rounds shown to the critic: [(image, reflection text), ...], oldest first
    editor_redraws: bool = False  # the editor is the generator and redraws for `regenerate`: a round's redraws
    # and edits go out in one batch (the embedded unified model writes both in one `generate`)

    def parse_critique(self, text: str) -> Critique:
        """The reflection read by the run's task (its instruction check), or in the general format."""
        return self.task.parse_critique(text) if self.task is not None else parse_critique(text)

    @property
    def recursion_limit(self) -> int:
        """The stop policy's bound on super-steps, plus two (candidate, pick) per fanned-out round."""
        wide = (self.search.best_of > 1) + (self.search.revisions > 1) * self.policy.max_rounds
        return self.policy.recursion_limit + 2 * wide


def earlier_rounds(rt: Runtime, session_id: str | None, current: int) -> list[tuple[np.ndarray, str]] | None:
    """The `rt.history` rounds before round `current` of a session, oldest first, as (image, the
    reflection written on it), from the store (they are finished); None when the run shows no history."""
    if not rt.history or session_id is None:
        return None
    rounds = rt.store.get(session_id).rounds[max(0, current - rt.history):max(current, 0)]
    return [(rt.store.load_image(r.image), r.critique or "") for r in rounds]


def human_critique_update(rt: Runtime, round_in_flight: dict, critique: str, scores: list[float]) -> dict:
    """The state update (the round with a person's critique, and the stop policy's decision on it)
    that the critique node would have returned had the critic written `critique`."""
    parsed = rt.parse_critique(critique)
    rnd = by_person(RoundRecord.model_validate(round_in_flight), critique, parsed)
    stop = rt.policy.decide(rnd.index, parsed.verdict, scores, None, parsed.instruction)
    return {"round": rnd.model_dump(), "stop_reason": stop}


def build_graph(rt: Runtime, checkpointer=None, review: bool = False):
    """`review=True` asks a person about every critique before its revision (the `review` node's
    interrupt); the node is always in the graph, so a run paused there resumes with or without it."""
    if rt.judge is None and (rt.search.best_of > 1 or rt.search.revisions > 1):
        raise ValueError("a search with several candidates per round needs a judge")

    def plan(state: LoopState, round_index: int) -> list[CandidateTask]:
        """Round 0 generates from the prompt; a revision edits the current image, or generates
        again when the critic said so (through the editor, when it redraws). Round r's seed is seed + r,
        as without search."""
        last = state.current if round_index > 0 else None
        edit = last is not None and (last.instruction != REGENERATE or rt.editor_redraws)
        return [CandidateTask(round=round_index, index=k, seed=candidate_seed(state.seed + round_index, k),
                              prompt=state.prompt, session_id=state.session_id,
                              instruction=last.instruction if edit else None, source=last.image if edit else None)
                for k in range(rt.search.width(round_index))]

    async def make_candidate(task: CandidateTask) -> Candidate:
        """One generator or editor call, then one judge call on its image (when there is a judge)."""
        t0 = time.perf_counter()
        if task.source is None:
            image, role = await rt.generator((task.prompt, task.seed)), "generate"
        else:
            source = await asyncio.to_thread(rt.store.load_image, task.source)
            past = await asyncio.to_thread(earlier_rounds, rt, task.session_id, task.round - 1) if rt.history else None
            image = await rt.editor((source, task.instruction, task.seed, task.prompt, past))
            role = "generate" if task.instruction == REGENERATE else "edit"
        seconds = time.perf_counter() - t0
        result = Candidate(round=task.round, index=task.index, image=await asyncio.to_thread(rt.store.put_image, image),
                          role=role, seconds=seconds)
        if rt.judge is None:
            return result
        t0 = time.perf_counter()
        scored = as_scored(await rt.judge((task.prompt, image)))
        return result.model_copy(update={"score": scored.value, "reason": scored.reason,
                                        "judge_seconds": time.perf_counter() - t0})

    def new_round(state: LoopState, candidates: list[Candidate]) -> dict:
        """The new round in flight, the judge's pick as its image. Without a verifier, a task makes the
        judge's verdict its ground truth; a verifier's is taken beside the critic's call (critique)."""
        judged = rt.judge is not None
        best = kept(candidates, judged)
        by_judge = judged and rt.task is not None and rt.verifier is None
        rnd = made(candidates, best, judged, best.score >= rt.task.judge_threshold if by_judge else None)
        scores = [*state.scores, best.score] if judged else state.scores
        return {"round": rnd.model_dump(), "revisions": best.round, "scores": scores, "tasks": []}

    async def open_round(state: LoopState, round_index: int) -> dict:
        tasks = plan(state, round_index)
        if len(tasks) == 1:
            return new_round(state, [await make_candidate(tasks[0])])
        return {"tasks": [t.model_dump() for t in tasks], "candidates": Overwrite([])}

    async def generate(state: LoopState) -> dict:
        return await open_round(state, 0)

    async def candidate(task: dict) -> dict:
        result = await make_candidate(CandidateTask.model_validate(task))
        return {"candidates": [result.model_dump()]}

    async def pick_node(state: LoopState) -> dict:
        return new_round(state, [Candidate.model_validate(c) for c in state.candidates])

    async def critique(state: LoopState) -> dict:
        """The critic's reflection on the round in flight, then whether to stop. The verifier's ground
        truth (recorded, never steering) is taken meanwhile in a thread: on the path between two model
        batches, 32 sessions' parses held the model up (bench --perf)."""
        rnd = state.current
        image = await asyncio.to_thread(rt.store.load_image, rnd.image)
        past = await asyncio.to_thread(earlier_rounds, rt, state.session_id, state.revisions) if rt.history else None
        truth = None
        if rt.verifier is not None and "verifier" not in rnd.rewards:
            truth = asyncio.ensure_future(asyncio.to_thread(rt.verifier, state.prompt, image))
        t0 = time.perf_counter()
        try:
            text = await rt.critic((state.prompt, image, past))
            seconds = time.perf_counter() - t0
        finally:
            rnd = rnd if truth is None else verified(rnd, bool(await truth))
        rnd = critiqued(rnd, text, seconds, rt.parse_critique)
        stop = rt.policy.decide(state.revisions, rnd.verdict, state.scores, rnd.critique_error, rnd.instruction)
        return {"round": rnd.model_dump(), "stop_reason": stop}

    async def revise(state: LoopState) -> dict:
        """The round in flight is finished: the store records it, and the next round opens."""
        await asyncio.to_thread(rt.store.upsert_round, state.session_id, state.current)
        return await open_round(state, state.revisions + 1)

    def review_request(state: LoopState) -> dict:
        rnd = state.current
        return {"session_id": state.session_id, "prompt": state.prompt, "round": state.revisions,
                "image": str(rt.store.image_path(rnd.image).resolve()), "instruction": rnd.instruction,
                "critique": rnd.critique}

    async def review_node(state: LoopState) -> dict:
        """Pause for a person (interrupt); resumed with {"action": accept|edit|reject, "critique": ...}."""
        answer = interrupt(await asyncio.to_thread(review_request, state))
        if answer["action"] == "reject":
            return {"stop_reason": "rejected_by_reviewer"}
        if answer["action"] == "edit":
            return human_critique_update(rt, state.round, answer["critique"], list(state.scores))
        return {}

    async def finish(state: LoopState) -> dict:
        """The session stops: the store records its last round and its ending in one write. Its image is
        the last round's, or the round the judge scored highest (stop.final)."""
        rnd = state.current
        k = rt.policy.final_round(state.scores, rnd.index)
        image = rnd.image if k == rnd.index else \
            (await asyncio.to_thread(rt.store.get, state.session_id)).rounds[k].image
        await asyncio.to_thread(rt.store.finish_session, state.session_id, state.stop_reason, image, rnd)
        return {}

    def fan_out(state: LoopState) -> str | list[Send]:
        return [Send("candidate", task) for task in state.tasks] if state.tasks else "critique"

    graph = StateGraph(LoopState)
    graph.add_node("generate", generate)
    graph.add_node("candidate", candidate)
    graph.add_node("pick", pick_node)
    graph.add_node("critique", critique)
    graph.add_node("revise", revise)
    graph.add_node("review", review_node)
    graph.add_node("finish", finish)
    graph.add_edge(START, "generate")
    graph.add_conditional_edges("generate", fan_out, ["candidate", "critique"])
    graph.add_edge("candidate", "pick")
    graph.add_edge("pick", "critique")
    after = "review" if review else "revise"
    graph.add_conditional_edges("critique", lambda s: "finish" if s.stop_reason else after, ["finish", after])
    graph.add_conditional_edges("review", lambda s: "finish" if s.stop_reason else "revise", ["finish", "revise"])
    graph.add_conditional_edges("revise", fan_out, ["candidate", "critique"])
    graph.add_edge("finish", END)
    return graph.compile(checkpointer=checkpointer)
