"""Human review: a person accepts, edits or rejects each critique before the revision it asks for.

The graph's `review` node pauses with LangGraph's `interrupt(request)`; the runner asks a
`Reviewer` and resumes the session with `Command(resume=decision)`, and the node applies it to the
round in flight (an edited critique stands as if the critic had said it;
agent.graph.human_critique_update). The store records the round once it is finished, after review.
Replay uses the same update for a critique a person writes after the fact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import BaseModel, model_validator
from rich.console import Console
from rich.markup import escape
from rich.prompt import Prompt

from agent.graph import human_critique_update  # noqa: F401 - replay's import, as before
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


async def ask(reviewer: Reviewer | None, request: dict) -> dict:
    """The answer to a session's pending interrupt, as `Command(resume=...)` carries it. With no
    reviewer (a run paused for review, resumed without --review), the critic's critique stands."""
    if reviewer is None:
        return ReviewDecision(action="accept").model_dump()
    return (await reviewer(ReviewRequest.model_validate(request))).model_dump()


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
