"""`refloop run`: reflection sessions on local models, logged as a run directory.

Everything that can be wrong with the input (prompts, config, model folders) is checked
before the run directory is created, so a failed start leaves nothing that looks like a run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.config import RunConfig
from agent.review import terminal_reviewer
from agent.runner import SessionSpec, load_models, make_runtime, model_folders, run_sessions
from agent.store import RunStore, StoreError, atomic_write
from agent.trajectory import RunManifest, SessionRecord
from world import PromptError, check_image, parse_prompt, suite

console = Console()
errors = Console(stderr=True, soft_wrap=True)
SPECS = "prompts.jsonl"


def bad_input(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


def read_specs(prompts: list[str] | None, prompts_file: Path | None, suite_name: str | None,
               per_family: int | None, seed: int) -> list[SessionSpec]:
    sources = [s for s in (prompts, prompts_file, suite_name) if s]
    if len(sources) != 1:
        raise ValueError("give prompts as arguments, or --prompts FILE.jsonl, or --suite NAME (exactly one)")
    if suite_name:
        return [SessionSpec(id=i.id, prompt=i.prompt, family=i.family, seed=i.seed)
                for i in suite(suite_name, per_family)]
    if prompts_file:
        if not prompts_file.is_file():
            raise ValueError(f"no such prompts file: {prompts_file}")
        specs = []
        for n, line in enumerate(prompts_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                specs.append(SessionSpec(id=str(row.get("id", f"p{n:05d}")), prompt=row["prompt"],
                                         family=row.get("family"), seed=int(row.get("seed", seed + n))))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{prompts_file}:{n}: expected a JSON object with 'prompt' ({e})") from None
    else:
        specs = [SessionSpec(id=f"p{n:05d}", prompt=p, seed=seed + n) for n, p in enumerate(prompts)]
    for spec in specs:  # the embedded world reads its prompts: say which one does not parse
        try:
            spec.family = spec.family or parse_prompt(spec.prompt).family
        except PromptError as e:
            raise ValueError(f"session {spec.id}: {e}") from None
    ids = Counter(s.id for s in specs)
    if dup := [i for i, c in ids.items() if c > 1]:
        raise ValueError(f"duplicate session ids: {', '.join(dup[:5])}")
    return specs


def folder_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def run_cmd(
    prompts: list[str] = typer.Argument(None, help="Prompts, e.g. 'two red circles above a blue square'."),
    prompts_file: Path = typer.Option(None, "--prompts", help="JSONL: one {prompt, id?, family?, seed?} a line."),
    suite_name: str = typer.Option(None, "--suite", help="A fixed ShapeWorld suite: train, dev or test."),
    per_family: int = typer.Option(None, min=1, help="With --suite: prompts per family."),
    config: Path = typer.Option(None, "--config", "-c", help="Run config YAML (models, stop policy, batching)."),
    max_rounds: int = typer.Option(None, help="Revisions allowed (0 = one-shot)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory to create (default runs/run-TIME)."),
    resume: Path = typer.Option(None, "--resume", help="Finish every unfinished session of this run."),
    review: bool = typer.Option(False, "--review", help="Pause before each revision: accept, edit or reject "
                                                        "the critique in the terminal."),
) -> None:
    """Run generate -> critique -> revise sessions, many at once, and log them."""
    try:
        if resume:
            store = RunStore.open(resume)
            cfg = RunConfig.model_validate(store.manifest.config)
            specs = [SessionSpec.model_validate_json(line)
                     for line in (store.root / SPECS).read_text().splitlines() if line.strip()]
        else:
            cfg = RunConfig.load(config, max_rounds=max_rounds)
            specs = read_specs(prompts, prompts_file, suite_name, per_family, cfg.seed)
    except (ValueError, StoreError, OSError) as e:
        raise bad_input(str(e)) from None
    try:  # load models before creating anything on disk
        image_model, critic, judge = load_models(cfg)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise bad_input(str(e)) from None
    if not resume:
        out = out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
        manifest = RunManifest(
            run_id=out.name, created_at=time.time(), config=cfg.model_dump(mode="json"), seed=cfg.seed,
            refloop_version=_version(),
            models={role: {"path": str(path), "hash": folder_hash(Path(path))}
                    for role, path in model_folders(image_model, critic, judge).items()})
        try:
            store = RunStore.create(out, manifest)
            atomic_write(store.root / SPECS, "".join(s.model_dump_json() + "\n" for s in specs).encode())
        except (StoreError, OSError) as e:
            raise bad_input(str(e)) from None
    rt = make_runtime(store, image_model, image_model, critic, cfg.stop, judge=judge,
                      verifier=lambda p, img: check_image(p, img).ok, max_batch=cfg.max_batch, search=cfg.search)
    reviewer = terminal_reviewer(console) if review else None
    records = _run_with_progress(rt, specs, cfg.concurrency, reviewer)
    store.write_jsonl()
    print_summary(records)
    if forks := [s.id for s in store.sessions() if s.parent_id and s.status == "running"]:
        console.print(f"unfinished forks, finished by `refloop replay {store.root} ID`: {', '.join(forks)}")
    console.print(f"run directory: {store.root}")


def _run_with_progress(rt, specs: list[SessionSpec], concurrency: int, reviewer=None) -> list[SessionRecord]:
    done = Counter()
    with Progress(TextColumn("sessions"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("rounds {task.fields[rounds]}  accuracy {task.fields[acc]}"),
                  TimeElapsedColumn(), console=console, disable=reviewer is not None) as bar:
        task = bar.add_task("run", total=len(specs), rounds=0, acc="-")

        def on_done(record: SessionRecord) -> None:
            done["n"] += 1
            done["rounds"] += len(record.rounds)
            done["right"] += bool(record.rounds and record.rounds[-1].correct)
            bar.update(task, advance=1, rounds=done["rounds"], acc=f"{done['right'] / done['n']:.2f}")

        return asyncio.run(run_sessions(rt, specs, concurrency, on_done=on_done, reviewer=reviewer))


def print_summary(records: list[SessionRecord]) -> None:
    n = len(records)
    first = sum(bool(r.rounds and r.rounds[0].correct) for r in records)
    final = sum(bool(r.rounds and r.rounds[-1].correct) for r in records)
    table = Table("sessions", "Acc@0", "Acc@final", "mean rounds", "stop reasons", title="run summary")
    reasons = Counter(r.stop_reason or f"failed: {r.error}"[:60] for r in records)
    table.add_row(str(n), f"{first / n:.3f}" if n else "-", f"{final / n:.3f}" if n else "-",
                  f"{sum(len(r.rounds) for r in records) / max(n, 1):.2f}",
                  ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    console.print(table)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("refloop")
    except PackageNotFoundError:
        return "unknown"
