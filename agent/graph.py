"""The reflection loop as a LangGraph state machine.

    generate -> critique -> (stop? finish : revise -> critique -> ...)

State holds paths and small values only; pixels live in the run store. Each node writes its
round to the store as it happens (a node re-run after a crash overwrites its own round), and
the critique node decides whether to stop, so that every stop has its reason in the state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from agent.store import RunStore
from agent.trajectory import RoundRecord
from model.worker import BatchedWorker
from policies.critique import REGENERATE, CritiqueError, parse_critique
from policies.stop import StopPolicy


class LoopState(BaseModel):
    session_id: str
    prompt: str
    seed: int
    revisions: int = 0  # revisions made so far; the current image is round `revisions`
    image: str | None = None  # current image, relative to the run directory
    verdict: str | None = None
    instruction: str | None = None
    critique_error: str | None = None
    scores: list[float] = []  # the judge's score of each round, when there is a judge
    stop_reason: str | None = None


@dataclass
class Runtime:
    """What the nodes need beside the state: models behind batched workers, the store, the policy.
    `verifier` (prompt, image) -> bool gives ground truth where it exists (ShapeWorld): it is
    recorded as a reward and never steers the loop."""

    store: RunStore
    generator: BatchedWorker  # (prompt, seed) -> image
    editor: BatchedWorker  # (image, instruction, seed) -> image
    critic: BatchedWorker  # (prompt, image) -> text
    policy: StopPolicy
    judge: BatchedWorker | None = None  # (prompt, image) -> score in [0, 1]
    verifier: Callable[[str, np.ndarray], bool] | None = None


def build_graph(rt: Runtime, checkpointer=None, interrupt_before: list[str] | None = None):
    """`interrupt_before=["revise"]` pauses each session after its critique (human review)."""
    async def new_round(state: LoopState, index: int, image: np.ndarray, role: str, seconds: float) -> dict:
        rel = rt.store.put_image(image)
        rewards, correct = {}, None
        if rt.verifier is not None:
            correct = bool(rt.verifier(state.prompt, image))
            rewards["verifier"] = float(correct)
        rt.store.upsert_round(state.session_id, RoundRecord(
            index=index, image=rel, rewards=rewards, correct=correct, timings={role: seconds},
            calls={"generator" if role == "generate" else "editor": 1}))
        return {"image": rel, "revisions": index, "verdict": None, "instruction": None, "critique_error": None}

    async def generate(state: LoopState) -> dict:
        t0 = time.perf_counter()
        image = await rt.generator((state.prompt, state.seed))
        return await new_round(state, 0, image, "generate", time.perf_counter() - t0)

    async def critique(state: LoopState) -> dict:
        image = rt.store.load_image(state.image)
        t0 = time.perf_counter()
        text = await rt.critic((state.prompt, image))
        seconds = time.perf_counter() - t0
        verdict = instruction = error = None
        try:
            parsed = parse_critique(text)
            verdict, instruction = parsed.verdict, parsed.instruction
        except CritiqueError as e:
            error = str(e)
        scores = list(state.scores)
        record = rt.store.get(state.session_id).rounds[state.revisions]
        rewards, timings, calls = dict(record.rewards), dict(record.timings), dict(record.calls)
        timings["critique"], calls["critic"] = seconds, 1
        if rt.judge is not None:
            t0 = time.perf_counter()
            score = float(await rt.judge((state.prompt, image)))
            timings["judge"], calls["judge"], rewards["judge"] = time.perf_counter() - t0, 1, score
            scores.append(score)
        rt.store.upsert_round(state.session_id, record.model_copy(update={
            "critique": text, "verdict": verdict, "instruction": instruction, "critique_error": error,
            "rewards": rewards, "timings": timings, "calls": calls}))
        stop = rt.policy.decide(state.revisions, verdict, scores, error, instruction)
        return {"verdict": verdict, "instruction": instruction, "critique_error": error, "scores": scores,
                "stop_reason": stop}

    async def revise(state: LoopState) -> dict:
        seed = state.seed + state.revisions + 1
        t0 = time.perf_counter()
        if state.instruction == REGENERATE:
            image, role = await rt.generator((state.prompt, seed)), "generate"
        else:
            source = rt.store.load_image(state.image)
            image, role = await rt.editor((source, state.instruction, seed)), "edit"
        return await new_round(state, state.revisions + 1, image, role, time.perf_counter() - t0)

    async def finish(state: LoopState) -> dict:
        rt.store.finish_session(state.session_id, state.stop_reason, final_image=state.image)
        return {}

    graph = StateGraph(LoopState)
    graph.add_node("generate", generate)
    graph.add_node("critique", critique)
    graph.add_node("revise", revise)
    graph.add_node("finish", finish)
    graph.add_edge(START, "generate")
    graph.add_edge("generate", "critique")
    graph.add_conditional_edges("critique", lambda s: "finish" if s.stop_reason else "revise", ["finish", "revise"])
    graph.add_edge("revise", "critique")
    graph.add_edge("finish", END)
    return graph.compile(checkpointer=checkpointer, interrupt_before=interrupt_before)
