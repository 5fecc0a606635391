"""Human review: a person accepts, edits or rejects each critique before the revision it asks for.

The graph is compiled with `interrupt_before=["revise"]`; the runner asks a `Reviewer` and writes
the answer into the paused state with `update_state(..., as_node="critique")`, as if the critic
had said it. Replay uses the same path for a critique a person writes after the fact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import BaseModel, model_validator
from rich.console import Console
from rich.markup import escape
from rich.prompt import Prompt

from agent.graph import Runtime
from policies.critique import REGENERATE, Critique, CritiqueError, parse_critique

CHOICES = "[a]ccept, [e]dit the instruction, [r]eject (stop this session)"


class ReviewUnanswered(RuntimeError):
    """The person could not answer (no terminal input)."""


class ReviewRequest(BaseModel):
    session_id: str
    prompt: str
    round: int
    image: str  # absolute path, for the person to open
    critique: str | None
    instruction: str | None


class ReviewDecision(BaseModel):
    action: Literal["accept", "edit", "reject"]
    critique: str | None = None  # with "edit": the reflection that replaces the critic's

    @model_validator(mode="after")
    def _critique_with_edit(self) -> ReviewDecision:
        if (self.action == "edit") != (self.critique is not None):
            raise ValueError("an edit, and only an edit, carries a critique")
        if self.critique is not None:
            parse_critique(self.critique)  # CritiqueError (a ValueError) says what is wrong
        return self


Reviewer = Callable[[ReviewRequest], Awaitable[ReviewDecision]]


def human_critique_update(rt: Runtime, session_id: str, round_index: int, critique: str,
                          scores: list[float]) -> dict:
    """Write a person's critique into round `round_index` of the session's record, and return the
    state update (with the stop policy's decision) that the critique node would have returned."""
    parsed = rt.parse_critique(critique)
    record = rt.store.get(session_id).rounds[round_index]
    rt.store.upsert_round(session_id, record.model_copy(update={
        "critique": critique.strip(), "verdict": parsed.verdict, "instruction": parsed.instruction,
        "critique_error": None, "critique_by": "human"}))
    stop = rt.policy.decide(round_index, parsed.verdict, scores, None, parsed.instruction)
    return {"verdict": parsed.verdict, "instruction": parsed.instruction, "critique_error": None,
            "stop_reason": stop}


async def review_paused(graph, rt: Runtime, config: dict, reviewer: Reviewer) -> None:
    """Ask the reviewer about a session paused before `revise`, and apply the answer."""
    snap = await graph.aget_state(config)
    v = snap.values
    request = ReviewRequest(
        session_id=v["session_id"], prompt=v["prompt"], round=v["revisions"],
        image=str(rt.store.image_path(v["image"]).resolve()), instruction=v.get("instruction"),
        critique=rt.store.get(v["session_id"]).rounds[v["revisions"]].critique)
    decision = await reviewer(request)
    if decision.action == "edit":
        update = human_critique_update(rt, request.session_id, request.round, decision.critique,
                                       list(v.get("scores", [])))
        await graph.aupdate_state(config, update, as_node="critique")
    elif decision.action == "reject":
        await graph.aupdate_state(config, {"stop_reason": "rejected_by_reviewer"}, as_node="critique")


def edited_critique(original: str | None, instruction: str, task=None) -> str:
    """The critic's reflection with the person's instruction (or 'right') in place of its own;
    ValueError when the task's check refuses the instruction (ShapeWorld: its edit grammar)."""
    try:
        base = parse_critique(original or "")
        seen, wrong = base.observations, base.defects
    except CritiqueError:
        seen, wrong = [], []
    if instruction.strip().lower() == "right":
        return Critique(verdict="right", observations=seen).text
    text = Critique(verdict="wrong", observations=seen, defects=wrong or ["as the reviewer says"],
                    instruction=" ".join(instruction.lower().split())).text
    if task is not None:
        task.parse_critique(text)  # CritiqueError (a ValueError) names what the task cannot carry out
    return text


def terminal_reviewer(console: Console | None = None, task=None) -> Reviewer:
    """Asks in the terminal, one session at a time; other sessions keep running meanwhile. A new
    instruction must pass the task's check (ShapeWorld: its edit grammar) or is asked for again."""
    console = console or Console()
    lock = asyncio.Lock()

    def ask(request: ReviewRequest) -> ReviewDecision:
        console.rule(f"{request.session_id}, round {request.round}")
        console.print(f"prompt: {request.prompt}\nimage: {request.image}", highlight=False)
        console.print(request.critique or "(no critique)", highlight=False, markup=False)
        while True:
            choice = Prompt.ask(escape(CHOICES), choices=["a", "e", "r"], default="a", console=console)
            if choice == "a":
                return ReviewDecision(action="accept")
            if choice == "r":
                return ReviewDecision(action="reject")
            text = Prompt.ask(escape(f"new instruction (an edit, '{REGENERATE}', or 'right')"), console=console)
            try:
                return ReviewDecision(action="edit", critique=edited_critique(request.critique, text, task))
            except ValueError as e:
                console.print(f"[red]not usable:[/] {e}", highlight=False)

    def ask_or_explain(request: ReviewRequest) -> ReviewDecision:
        try:
            return ask(request)
        except EOFError:  # stdin closed: the session fails (exit status 1), saying why
            raise ReviewUnanswered("no answer from the reviewer: standard input is closed; run --review in a "
                                   "terminal") from None

    async def reviewer(request: ReviewRequest) -> ReviewDecision:
        async with lock:
            return await asyncio.to_thread(ask_or_explain, request)

    return reviewer
