"""`refloop replay RUN_DIR SESSION --from-round K [--critique TEXT]`: fork a session (time travel)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from agent.config import RunConfig
from agent.replay import ReplayError, fork_session, resume_fork
from agent.runner import load_models, make_runtime
from agent.store import RunStore, StoreError
from agent.trajectory import SessionRecord
from world import check_image

console = Console()
errors = Console(stderr=True, soft_wrap=True)


def bad_input(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


def replay_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory written by refloop run."),
    session: str = typer.Argument(..., help="The session to fork (or an unfinished fork to finish)."),
    from_round: int = typer.Option(None, "--from-round", min=0, help="Keep rounds 0..K, go on from round K."),
    critique: str = typer.Option(None, help="Your reflection on round K (seen:/wrong:/verdict:/edit: lines); "
                                            "without it the critic looks at round K again."),
    critique_file: Path = typer.Option(None, help="Read the reflection from this file."),
) -> None:
    """Fork SESSION at round K with LangGraph time travel; the fork is a new session linked to it."""
    try:
        store = RunStore.open(run_dir)
        record = store.get(session)
        cfg = RunConfig.model_validate(store.manifest.config)
        if critique_file is not None:
            if critique is not None:
                raise ValueError("give --critique or --critique-file, not both")
            critique = critique_file.read_text()
        if from_round is None and not (record.parent_id and record.status == "running"):
            raise ValueError("give --from-round K (only an unfinished fork can be finished without it)")
    except (ValueError, StoreError, OSError) as e:
        raise bad_input(str(e)) from None
    try:
        image_model, critic, judge = load_models(cfg)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise bad_input(str(e)) from None
    rt = make_runtime(store, image_model, image_model, critic, cfg.stop, judge=judge,
                      verifier=lambda p, img: check_image(p, img).ok, max_batch=cfg.max_batch, search=cfg.search)

    async def go() -> SessionRecord:
        try:
            if from_round is None:
                return await resume_fork(rt, session)
            return await fork_session(rt, session, from_round, critique)
        finally:
            for worker in (rt.generator, rt.editor, rt.critic):
                await worker.close()

    try:
        fork = asyncio.run(go())
    except ReplayError as e:
        raise bad_input(str(e)) from None
    store.write_jsonl()
    print_fork(fork)


def print_fork(fork: SessionRecord) -> None:
    table = Table("round", "critique by", "verdict", "instruction", "correct", title=f"{fork.id} "
                  f"(fork of {fork.parent_id} at round {fork.fork_round})")
    for r in fork.rounds:
        correct = "-" if r.correct is None else ("yes" if r.correct else "no")
        table.add_row(str(r.index), r.critique_by, r.verdict or "-", r.instruction or r.critique_error or "-", correct)
    console.print(table, highlight=False)
    console.print(f"stop reason: {fork.stop_reason or fork.error}", highlight=False)
