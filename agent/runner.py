"""Runs many sessions at once: asyncio for the sessions, batched workers for the models,
LangGraph's SQLite checkpointer for durability. A killed run resumes every session where its
last completed node left it (durability "sync": at most the node in flight runs again)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.types import Command

from agent import checkpoints
from agent.config import RunConfig
from agent.graph import LoopState, Runtime, build_graph
from agent.review import Reviewer, ask
from agent.round import verified
from agent.trajectory import RoundRecord, SessionRecord, SessionSpec
from model.backends import load_critic, load_image_model, load_judge
from model.roles import Critic, Editor, Generator, Judge
from model.worker import BatchedWorker, Crowd, Turn
from policies.search import SearchPolicy
from rewards.base import Reward
from rewards.learned import LearnedReward, LearnedRewardConfig
from rewards.verifier import VerifierReward
from tasks import Task, load_task

CHECKPOINTS = "checkpoints.sqlite"
__all__ = ["CHECKPOINTS", "SessionSpec", "load_models", "make_runtime", "run_sessions"]


async def open_checkpointer(path: Path) -> checkpoints.ThreadedSqliteSaver:
    # the one type of ours in checkpoints, registered: LangGraph will refuse unregistered ones
    return await checkpoints.open_checkpointer(path, JsonPlusSerializer(allowed_msgpack_modules=[LoopState]))


async def run_sessions(rt: Runtime, specs: list[SessionSpec], concurrency: int = 32,
                       on_done: Callable[[SessionRecord], None] | None = None,
                       reviewer: Reviewer | None = None) -> list[SessionRecord]:
    """Run (or finish) every session in `specs`; sessions already done are left as they are.
    With a reviewer, each session pauses before every revision until the reviewer answers."""
    saver = await open_checkpointer(rt.store.root / CHECKPOINTS)
    graph = build_graph(rt, saver, review=reviewer is not None)
    limit = rt.recursion_limit + (rt.policy.max_rounds + 1 if reviewer else 0)  # a review node per revision
    gate = asyncio.Semaphore(concurrency)

    async def one(spec: SessionSpec) -> SessionRecord:
        async with gate:
            with rt.crowd.session(spec.id) if rt.crowd else contextlib.nullcontext():
                return await session(spec)

    async def session(spec: SessionSpec) -> SessionRecord:
        record = rt.store.start_session(SessionRecord(
            id=spec.id, prompt=spec.prompt, family=spec.family, seed=spec.seed, started_at=time.time()))
        if record.status != "running":
            return record
        config = {"configurable": {"thread_id": spec.id}, "recursion_limit": limit}
        snapshot = await graph.aget_state(config)
        step = None if snapshot.values else LoopState(session_id=spec.id, prompt=spec.prompt, seed=spec.seed)
        try:
            while True:  # one pass; with review, one more per answer (the review node's interrupt)
                await graph.ainvoke(step, config, durability="sync")
                snapshot = await graph.aget_state(config)
                pending = [i.value for task in snapshot.tasks for i in task.interrupts]
                if not pending:
                    break
                with rt.crowd.away() if rt.crowd else contextlib.nullcontext():  # a person may take minutes
                    step = Command(resume=await ask(reviewer, pending[0]))
            record = rt.store.get(spec.id)
        except Exception as e:  # noqa: BLE001 - one session's failure must not sink the others
            in_flight = (await graph.aget_state(config)).values.get("round")  # as far as it got
            last = await asyncio.to_thread(with_truth, rt, spec.prompt, in_flight)
            record = rt.store.fail_session(spec.id, f"{type(e).__name__}: {e}", last)
        if on_done:
            on_done(record)
        return record

    try:
        return await asyncio.gather(*(one(s) for s in specs))
    finally:
        await saver.close()
        for worker in (rt.generator, rt.editor, rt.critic, rt.judge):
            if worker is not None:
                await worker.close()


def with_truth(rt: Runtime, prompt: str, in_flight: dict | None) -> RoundRecord | None:
    """The round in flight of a failed session, with the verifier's ground truth when the critique
    that takes it (agent/graph.py) did not get that far."""
    rnd = RoundRecord.model_validate(in_flight) if in_flight else None
    if rnd is None or rt.verifier is None or "verifier" in rnd.rewards:
        return rnd
    try:
        return verified(rnd, bool(rt.verifier(prompt, rt.store.load_image(rnd.image))))
    except Exception:  # noqa: BLE001 - the verifier may be what failed: record the round as it is
        return rnd


def make_runtime(store, generator, editor, critic, policy, judge=None, verifier=None, max_batch: int = 32,
                 search: SearchPolicy | None = None, task: Task | None = None, history: int = 0) -> Runtime:
    """Put each model role behind a batched worker shared by all sessions (and by their crowd).
    With a task and no `verifier`, the task's exact verifier (when it has one) is the verifier."""
    crowd, turn = Crowd(), Turn()
    here = lambda model: turn if getattr(model, "runs_here", True) else None  # noqa: E731 - a served model: its own server
    if verifier is None and task is not None and task.has_verifier:
        verifier = lambda p, img: task.verify(p, img).ok  # noqa: E731
    return Runtime(
        store=store,
        generator=BatchedWorker("generator", lambda xs: generator.generate([p for p, _ in xs], [s for _, s in xs]),
                                max_batch, crowd=crowd, turn=here(generator)),
        editor=BatchedWorker("editor", lambda xs: revise_or_edit(editor, xs), max_batch, crowd=crowd,
                             turn=here(editor)),
        critic=BatchedWorker("critic", lambda xs: critique_rows(critic, xs), max_batch, crowd=crowd,
                             turn=here(critic)),
        judge=None if judge is None else BatchedWorker(
            "judge", lambda xs: judge.score([p for p, _ in xs], [i for _, i in xs]), max_batch, crowd=crowd,
            turn=here(judge)),
        policy=policy,
        verifier=verifier,
        search=search or SearchPolicy(),
        crowd=crowd,
        task=task,
        history=history,
        editor_redraws=editor is generator and getattr(editor, "redraws", False),
    )


def critique_rows(critic, rows: list[tuple]) -> list[str]:
    """Rows of (prompt, image, history). Rows with history go out in one batch like any others
    (a row with fewer earlier rounds gets a shorter list); without history the argument is left out,
    so critics that take none work as before."""
    prompts, images, history = ([row[k] for row in rows] for k in range(3))
    if all(h is None for h in history):
        return critic.critique(prompts, images)
    return critic.critique(prompts, images, history=[h or [] for h in history])


def revise_or_edit(editor, rows: list[tuple]) -> list:
    """Rows of (image, instruction, seed, prompt, history). A model that revises with the session's
    prompt in view (the embedded unified model) gets it; a plain editor gets the instruction alone.
    An editor that declares `supports_history` gets the earlier rounds too (when the run shows them)."""
    images, instructions, seeds, prompts, history = (list(col) for col in zip(*rows))
    extra = {"history": [h or [] for h in history]} if (
        getattr(editor, "supports_history", False) and any(h is not None for h in history)) else {}
    if hasattr(editor, "revise"):
        return editor.revise(prompts, images, instructions, seeds, **extra)
    return editor.edit(images, instructions, seeds, **extra)


def make_judge(cfg: RunConfig) -> Reward | Judge | None:
    """The judge the run's search policy names (None: no judge)."""
    if cfg.search.judge == "verifier":
        return VerifierReward(load_task(cfg.task).verify)
    if cfg.search.judge == "model":
        judge = cfg.models.judge
        return LearnedReward(judge.path, judge.device) if isinstance(judge, LearnedRewardConfig) else load_judge(judge)
    return None


def load_models(cfg: RunConfig) -> tuple[Generator | Editor, Critic, Reward | Judge | None]:
    """The image model (generator and editor), the critic and the judge a run config names.
    A critic with a `template` the config leaves out asks in the task's words.
    FileNotFoundError or ValueError says which folder or setting is wrong."""
    critic = cfg.models.critic
    if getattr(critic, "template", "") is None:
        critic = critic.model_copy(update={"template": load_task(cfg.task).critic_template})
    return load_image_model(cfg.models.image), load_critic(critic), make_judge(cfg)


def model_folders(image_model, critic, judge=None) -> dict[str, str]:
    """Role -> model folder, for the run manifest (an editor or judge with a folder of its own too)."""
    folders = {"image": str(image_model.path), "critic": str(critic.path)}
    if getattr(image_model, "edit_path", None) not in (None, image_model.path):
        folders["editor"] = str(image_model.edit_path)
    if getattr(judge, "path", None) is not None:
        folders["judge"] = str(judge.path)
    return folders
