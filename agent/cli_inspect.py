"""`refloop inspect RUN_DIR`: a run's self-correction metrics as tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from agent.errors import refusals
from agent.files import StoreError
from agent.metrics import Metrics, by_family, flips, fmt

if TYPE_CHECKING:
    from agent.store import RunStore

console = Console()


def _table(title: str, columns: dict[str, dict[str, Metrics]]) -> Table:
    """Rows are families; with several runs, each metric gets a column per run."""
    table = Table("family", title=title)
    names = list(columns)
    fields = [("n", lambda m: str(m.sessions)), ("Acc@0", lambda m: fmt(m.acc0)),
              ("Acc@final", lambda m: fmt(m.acc_final)), ("delta", lambda m: fmt(m.delta, signed=True)),
              ("i->c", lambda m: fmt(m.i_to_c)), ("c->i", lambda m: fmt(m.c_to_i)),
              ("repair", lambda m: fmt(m.repair)),
              ("rounds", lambda m: f"{m.mean_rounds:.2f}"), ("s/session", lambda m: f"{m.seconds_per_session:.2f}")]
    for label, _ in fields:
        for name in names:
            table.add_column(label if len(names) == 1 else f"{label} {name}", justify="right")
    families = list(dict.fromkeys(f for col in columns.values() for f in col))
    for family in families:
        cells = []
        for _, show in fields:
            cells += [show(columns[n][family]) if family in columns[n] else "-" for n in names]
        table.add_row(f"[bold]{family}" if family == "overall" else family, *cells)
    return table


def readable_sessions(store: RunStore) -> list:
    """Every session of the run; a record that cannot be read stops inspect with its name (exit 2)."""
    try:
        return list(store.sessions())
    except StoreError as e:
        raise StoreError(f"{e}; move that file out of {store.root / 'sessions'} or restore it, then retry") from None


def inspect_cmd(
    run: Path = typer.Argument(..., help="A run directory."),
    compare: Path = typer.Option(None, "--compare", help="A second run, side by side."),
    failures: bool = typer.Option(False, "--failures", help="List the sessions still wrong at the end."),
    show_flips: bool = typer.Option(False, "--flips", help="List the sessions that flipped (either way)."),
) -> None:
    """Accuracy by round and family, delta, i->c, c->i, stop reasons, calls and time per session."""
    from agent.store import RunStore

    with refusals():
        stores = {run.name: RunStore.open(run)}
        if compare:
            stores[compare.name if compare.name != run.name else f"{compare.name} (b)"] = RunStore.open(compare)
        records = {name: readable_sessions(store) for name, store in stores.items()}
    console.print(_table("self-correction by family", {n: by_family(rs) for n, rs in records.items()}))
    for name, rs in records.items():
        overall = by_family(rs)["overall"]
        rounds = ", ".join(f"{a:.3f}" for a in overall.acc_by_round)
        calls = ", ".join(f"{k} {v:.2f}" for k, v in overall.calls_per_session.items())
        reasons = ", ".join(f"{k} {v}" for k, v in overall.stop_reasons.items())
        console.print(f"[bold]{name}[/]: accuracy by round [{rounds}]; calls per session: {calls}; "
                      f"stop reasons: {reasons}", highlight=False)
    if failures or show_flips:
        for name, rs in records.items():
            groups = flips(rs)
            wanted = (["wrong -> right", "right -> wrong"] if show_flips else []) + (
                ["wrong at the end"] if failures else [])
            for kind in wanted:
                table = Table("session", "family", "prompt", "rounds", "stop", title=f"{name}: {kind}")
                for r in groups[kind]:
                    table.add_row(r.id, r.family or "", r.prompt, str(len(r.rounds)), r.stop_reason or r.status)
                console.print(table)
