"""`refloop replay RUN_DIR SESSION --from-round K [--critique TEXT]`: fork a session (time travel).

Everything is checked (session, round, critique) before the models load; the fork is written
under the run's writer lock. Exit 0 when the fork is done, 1 when it failed or was left unfinished,
2 on bad input or when another process writes the run.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from agent.cli_common import load_models_or_refuse, run_config
from agent.errors import UsageError, exit_status, fail, read_text, refusals
from agent.trajectory import SessionRecord

console = Console()


def bad_input(message: str) -> typer.Exit:
    return fail(message)


def replay_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory written by refloop run."),
    session: str = typer.Argument(..., help="The session to fork (or an unfinished fork to finish)."),
    from_round: int = typer.Option(None, "--from-round", help="Keep rounds 0..K, go on from round K."),
    critique: str = typer.Option(None, help="Your reflection on round K (seen:/wrong:/verdict:/edit: lines); "
                                            "without it the critic looks at round K again."),
    critique_file: Path = typer.Option(None, help="Read the reflection from this file."),
) -> None:
    """Fork SESSION at round K with LangGraph time travel; the fork is a new session linked to it.

    Exit status: 0 the fork is done; 1 it failed or was left unfinished; 2 bad input or another
    process writes the run (nothing written).
    """
    from agent.store import RunStore

    run = None
    try:
        with refusals():
            reader = RunStore.open(run_dir)
            record = reader.get(session)
            cfg = run_config(reader.manifest.config, f"the config saved in {reader.root}")
            critique = check_request(record, from_round, critique, critique_file, run_task(cfg))
            from agent.run import Run

            run = Run(RunStore.open(run_dir, writer=True), cfg, [])  # the fork's writer
            image_model, critic, judge = load_models_or_refuse(cfg, console)
        fork = replay(run, session, from_round, critique, image_model, critic, judge)
        run.store.write_jsonl()
    finally:
        if run is not None:
            run.close()
    print_fork(fork)
    raise typer.Exit(exit_status([fork]))


def check_request(record: SessionRecord, from_round: int | None, critique: str | None,
                  critique_file: Path | None, task=None) -> str | None:
    """The critique to use; UsageError for a round, a session or a critique that cannot be forked
    (read by the run's task)."""
    from policies.critique import CritiqueError, parse_critique

    if critique_file is not None:
        if critique is not None:
            raise UsageError("give --critique or --critique-file, not both")
        critique = read_text(critique_file, "--critique-file")
    if from_round is None:
        if not (record.parent_id and record.status == "running"):
            raise UsageError("give --from-round K (only an unfinished fork can be finished without it)")
        if critique is not None:
            raise UsageError("--critique goes with --from-round K")
        return None
    if record.status == "running":
        raise UsageError(f"session {record.id} is still running: finish it (refloop run --resume) before forking")
    if not 0 <= from_round < len(record.rounds):
        raise UsageError(f"--from-round {from_round}: session {record.id} has rounds 0..{len(record.rounds) - 1}")
    if critique is not None:
        try:
            task.parse_critique(critique) if task is not None else parse_critique(critique)
        except CritiqueError as e:
            raise UsageError(f"--critique does not follow the format (seen:/wrong:/verdict:/edit: lines): "
                             f"{e}") from None
    return critique


def run_task(cfg):
    from tasks import load_task

    try:
        return load_task(cfg.task)
    except ValueError as e:
        raise UsageError(str(e)) from None


def replay(run, session: str, from_round: int | None, critique: str | None, image_model, critic,
           judge) -> SessionRecord:
    import asyncio

    from agent.replay import ReplayError, fork_session, resume_fork

    rt = run.runtime(image_model, critic, judge)

    async def go() -> SessionRecord:
        try:
            if from_round is None:
                return await resume_fork(rt, session)
            return await fork_session(rt, session, from_round, critique)
        finally:
            for worker in (rt.generator, rt.editor, rt.critic, rt.judge):
                if worker is not None:
                    await worker.close()

    try:
        return asyncio.run(go())
    except ReplayError as e:
        raise bad_input(str(e)) from None


def print_fork(fork: SessionRecord) -> None:
    from rich.table import Table

    table = Table("round", "critique by", "verdict", "instruction", "correct", title=f"{fork.id} "
                  f"(fork of {fork.parent_id} at round {fork.fork_round})")
    for r in fork.rounds:
        correct = "-" if r.correct is None else ("yes" if r.correct else "no")
        table.add_row(str(r.index), r.critique_by, r.verdict or "-", r.instruction or r.critique_error or "-", correct)
    console.print(table, highlight=False)
    console.print(f"stop reason: {fork.stop_reason or fork.error}", highlight=False)
