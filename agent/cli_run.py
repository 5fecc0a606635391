"""`refloop run`: reflection sessions on local models, logged as a run directory.

Everything that can be wrong with the input (prompts, config, numbers, output folder, model
folders) is checked before the run directory is created, so a failed start leaves nothing that
looks like a run (exit 2). The run is written under its writer lock (agent/lock.py): a second
`run --resume` of the same run is refused with the holder's pid.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console

from agent.cli_common import check_out_dir, config_task, load_models_or_refuse, load_run_config, read_specs
from agent.errors import FAILED, UsageError, exit_status, fail, refusals
from agent.trajectory import SessionRecord

console = Console()
errors = Console(stderr=True, soft_wrap=True)


def bad_input(message: str) -> typer.Exit:
    return fail(message)


def run_cmd(
    prompts: list[str] = typer.Argument(None, help="Prompts, e.g. 'two red circles above a blue square'."),
    prompts_file: Path = typer.Option(None, "--prompts", help="JSONL: one {prompt, id?, family?, seed?} a line."),
    suite_name: str = typer.Option(None, "--suite", help="A fixed suite of the task: train, dev or test "
                                                         "(shapeworld), demo (open)."),
    per_family: int = typer.Option(None, help="With --suite: prompts per family."),
    config: Path = typer.Option(None, "--config", "-c", help="Run config YAML (models, stop policy, batching)."),
    max_rounds: int = typer.Option(None, help="Revisions allowed (0 = one-shot, at most 100)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory to create (default runs/run-TIME)."),
    resume: Path = typer.Option(None, "--resume", help="Finish every unfinished session of this run (with the "
                                                       "run's own prompts and config)."),
    review: bool = typer.Option(False, "--review", help="Pause before each revision: accept, edit or reject "
                                                        "the critique in the terminal."),
) -> None:
    """Run generate -> critique -> revise sessions, many at once, and log them.

    Exit status: 0 every session done; 1 a session failed or was left unfinished; 2 bad input or a
    refused start (another process writes the run, say): nothing written.
    """
    run = None
    try:
        with refusals():
            if resume:
                given = {"PROMPTS": prompts, "--prompts": prompts_file, "--suite": suite_name,
                         "--per-family": per_family, "--config": config, "--max-rounds": max_rounds, "--out": out}
                if ignored := [name for name, value in given.items() if value not in (None, [], ())]:
                    raise UsageError(f"--resume finishes {resume} with its own prompts and config; "
                                     f"drop {', '.join(ignored)}")
                from agent.run import Run

                run = Run.open(resume)  # its saved config and prompts, checked; RunBusy when another process writes
                cfg, specs = run.cfg, run.specs
            else:
                task = config_task(config)  # the config's task reads the prompts
                specs = read_specs(prompts, prompts_file, suite_name, per_family, 0, task)  # fast: no torch yet
                cfg = load_run_config(config, max_rounds=max_rounds)
                if cfg.seed:
                    specs = read_specs(prompts, prompts_file, suite_name, per_family, cfg.seed, task)
                out = out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
                check_out_dir(out)
            image_model, critic, judge = load_models_or_refuse(cfg, console)  # before anything is written
            if not resume:
                run = create_run(out, cfg, specs, image_model, critic, judge)
        records = run_all(run, image_model, critic, judge, review)
    finally:
        if run is not None:
            run.close()
    store = run.store
    print_summary(records)
    if forks := [s.id for s in store.sessions() if s.parent_id and s.status == "running"]:
        console.print(f"unfinished forks, finished by `refloop replay {store.root} ID`: {', '.join(forks)}",
                      highlight=False)
    console.print(f"run directory: {store.root}", highlight=False)
    code = exit_status(records)
    if code == FAILED:
        report_unfinished(store.root, records)
    raise typer.Exit(code)


def create_run(out: Path, cfg, specs, image_model, critic, judge):
    """The run directory (manifest with the model folders and their hashes, prompts), under its lock."""
    from agent.cli_common import folder_hash
    from agent.run import Run
    from agent.runner import model_folders

    models = {role: {"path": str(path), "hash": folder_hash(Path(path))}
              for role, path in model_folders(image_model, critic, judge).items()}
    return Run.create(out, cfg, specs, models)


def run_all(run, image_model, critic, judge, review: bool) -> list[SessionRecord]:
    from agent.review import terminal_reviewer

    rt = run.runtime(image_model, critic, judge)
    reviewer = terminal_reviewer(console, run.task) if review else None
    return _run_with_progress(run, rt, reviewer)


def report_unfinished(root: Path, records: list[SessionRecord]) -> None:
    failed = [r.id for r in records if r.status == "failed"]
    running = [r.id for r in records if r.status == "running"]
    if failed:
        errors.print(f"{len(failed)} session(s) failed: {', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}; "
                     f"their errors: `refloop inspect {root} --failures`", highlight=False, markup=False)
    if running:
        errors.print(f"{len(running)} session(s) unfinished; finish them with `refloop run --resume {root}`",
                     highlight=False, markup=False)


def _run_with_progress(run, rt, reviewer=None) -> list[SessionRecord]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agent.metrics import share

    done = Counter()
    with Progress(TextColumn("sessions"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("rounds {task.fields[rounds]}  accuracy {task.fields[acc]}"),
                  TimeElapsedColumn(), console=console, disable=reviewer is not None) as bar:
        task = bar.add_task("run", total=len(run.specs), rounds=0, acc="-")

        def on_done(record: SessionRecord) -> None:
            done["n"] += 1
            done["rounds"] += len(record.rounds)
            last = record.final_round.correct if record.rounds else None
            done["judged"] += last is not None
            done["right"] += bool(last)
            acc = share(done["right"], done["judged"])
            bar.update(task, advance=1, rounds=done["rounds"], acc="unknown" if acc is None else f"{acc:.2f}")

        return run.execute(rt, on_done=on_done, reviewer=reviewer)


def print_summary(records: list[SessionRecord]) -> None:
    from rich.table import Table

    n = len(records)

    def acc(k: int) -> str:
        """Right sessions over all (a failed one counts as wrong); unknown when no round has a verdict.
        k = -1: the round the session ended on (stop.final)."""
        verdicts = [(r.rounds[k] if k >= 0 else r.final_round).correct if r.rounds else False for r in records]
        if not n or all(v is None for v in verdicts):
            return "-" if not n else "unknown"
        return f"{sum(bool(v) for v in verdicts) / n:.3f}"

    table = Table("sessions", "Acc@0", "Acc@final", "mean rounds", "stop reasons", title="run summary")
    reasons = Counter(r.stop_reason or f"failed: {r.error}"[:60] for r in records)
    table.add_row(str(n), acc(0), acc(-1),
                  f"{sum(len(r.rounds) for r in records) / max(n, 1):.2f}",
                  ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    console.print(table)

