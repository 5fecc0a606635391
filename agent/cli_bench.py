"""`refloop bench`: one-shot vs best-of-N vs reflection on a fixed suite, or `--perf`: what the
orchestration costs. Input is checked before anything is written (exit 2 with the reason)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Column, Table

from agent.cli_common import check_out_dir, config_task, folder_hash, load_models_or_refuse, load_run_config, read_specs
from agent.errors import FAILED, OK, UsageError, fail, refusals
from agent.metrics import fmt

console = Console()
PERF_SESSIONS = 32


def bad_input(message: str) -> typer.Exit:
    return fail(message)


def check_out(out: Path) -> None:
    """--out must be new or an empty directory, under a directory we can write to."""
    check_out_dir(out)


def bench_cmd(
    suite_name: str = typer.Option(None, "--suite", help="The task's suite: train, dev or test (shapeworld, "
                                                         "default dev), demo (open)."),
    per_family: int = typer.Option(None, help="Prompts per family (default: the whole suite; not with --perf)."),
    max_rounds: int = typer.Option(None, help="Revisions allowed to the reflection arm (default: the config's)."),
    config: Path = typer.Option(None, "--config", "-c", help="Run config YAML (models, stop policy, batching)."),
    out: Path = typer.Option(None, "--out", "-o", help="New or empty folder for the arms' runs and the report."),
    perf: bool = typer.Option(False, "--perf", help=f"Time {PERF_SESSIONS} sessions batched vs one at a time, "
                                                    "the share of time outside model calls, one session's latency."),
) -> None:
    """Compare one-shot, best-of-N (same generator-call budget) and reflection on the same prompts and seeds.

    Exit status: 0 every session of every arm done; 1 a session failed or was left unfinished;
    2 bad input (nothing written).
    """
    with refusals():
        task = config_task(config)
        suite_name = suite_name or (task.suites[0] if task.suites else "dev")
        families = task.families or ("",)
        cfg = load_run_config(config, max_rounds=max_rounds)
        if not perf and not task.has_verifier:
            from agent.bench import bench_judge

            if bench_judge(cfg) is None:
                raise UsageError(f"--config {config}: best-of-N needs a judge and the {task.name} task has no "
                                 "verifier; give one in models.judge (kind: hf_vlm, say)")
        if perf:  # PERF_SESSIONS sessions, round-robin over the families
            if per_family is not None:
                raise UsageError(f"--per-family does not go with --perf (it times {PERF_SESSIONS} sessions)")
            per_family = math.ceil(PERF_SESSIONS / len(families))
        specs = read_specs(None, None, suite_name, per_family, cfg.seed, task)
        from agent.bench import perf_specs

        specs = perf_specs(specs, PERF_SESSIONS) if perf else specs
        out = out or Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S")
        check_out(out)
        image_model, critic, judge = load_models_or_refuse(cfg, console)
        out.mkdir(parents=True, exist_ok=True)
    from agent.bench import run_bench, run_perf
    from agent.runner import make_judge, make_runtime, model_folders

    models = {role: {"path": path, "hash": folder_hash(Path(path))}
              for role, path in model_folders(image_model, critic, judge).items()}

    def factory(store, arm_cfg):
        return make_runtime(store, image_model, image_model, critic, arm_cfg.stop, judge=make_judge(arm_cfg),
                            max_batch=arm_cfg.max_batch, search=arm_cfg.search, task=task, history=arm_cfg.history)

    rounds = cfg.stop.max_rounds
    if perf:
        console.print(f"timing {len(specs)} sessions of up to {rounds} revisions under {out}", highlight=False)
        forget = [m.forget for m in {id(m): m for m in (image_model, critic, judge)}.values() if hasattr(m, "forget")]
        print_perf(run_perf(cfg, specs, out, factory, rounds, models, forget=lambda: [f() for f in forget]))
    else:
        from agent.bench import ARMS

        console.print(f"{len(ARMS)} arms x {len(specs)} sessions of {suite_name} under {out}", highlight=False)
        report = run_bench(cfg, specs, out, factory, suite_name, rounds, models, on_arm=print_arm)
        print_bench(report)
    console.print(f"report: {out}")
    raise typer.Exit(arms_status(out))


def arms_status(out: Path) -> int:
    """0 when every session of every run under `out` is done, else 1 (with the runs named)."""
    from agent.store import RunStore

    bad = [d.name for d in sorted(out.iterdir()) if (d / "manifest.json").is_file()
           and any(r.status != "done" for r in RunStore.open(d).sessions())]
    if bad:
        console.print(f"sessions failed or unfinished in: {', '.join(bad)}", highlight=False)
    return FAILED if bad else OK


def print_arm(arm) -> None:
    m = arm.metrics["overall"]
    console.print(f"{arm.name}: Acc@final {fmt(m.acc_final)} in {arm.wall_seconds:.1f} s ({arm.run_dir})",
                  highlight=False)


def narrow_table(*headers: str, title: str) -> Table:
    """A light table whose headers are never cut, so that it reads in an 80-column terminal."""
    return Table(*(Column(h, min_width=len(h)) for h in headers), title=title, box=box.SIMPLE_HEAD, pad_edge=False)


def print_bench(report) -> None:
    """Tables narrow enough for a terminal: accuracy by family, then cost by arm; bench.md has every
    figure by family and arm. Reflection's Acc@0 is the one-shot column: round 0 is the one-shot image."""
    from agent.bench_report import gen_calls

    arms, best = report.arms, f"best-of-{report.budget}"
    table = narrow_table("family", "n", "1-shot", best, "reflection", "delta", "i->c", "c->i",
                         "repair", title=f"Acc@final on {report.suite}; delta, i->c, c->i, repair rate of reflection")
    for family, m in arms["reflection"].metrics.items():
        table.add_row(family, str(m.sessions), fmt(arms['one_shot'].metrics[family].acc_final),
                      fmt(arms['best_of_n'].metrics[family].acc_final), fmt(m.acc_final),
                      fmt(m.delta, signed=True), fmt(m.i_to_c), fmt(m.c_to_i), fmt(m.repair),
                      style="bold" if family == "overall" else None)
    console.print(table)
    cost = narrow_table("arm", "Acc@final", "rounds", "gen+edit", "calls", "model s", "wall s",
                        title="per session (model s: inside model calls); wall s: the arm")
    for arm in arms.values():
        m = arm.metrics["overall"]
        cost.add_row(best if arm.name == "best_of_n" else arm.name, fmt(m.acc_final), f"{m.mean_rounds:.2f}",
                     f"{gen_calls(m):.2f}", f"{sum(m.calls_per_session.values()):.2f}", f"{m.seconds_per_session:.2f}",
                     f"{arm.wall_seconds:.1f}")
    console.print(cost)
    targets = narrow_table("target", "value", "goal", "met", title="targets")
    for t in report.targets:
        targets.add_row(t.name, fmt(t.value), t.goal, "yes" if t.met else "[red]no")
    console.print(targets)
    console.print(f"budget rule: {report.budget_rule}", highlight=False)


def print_perf(report) -> None:
    table = narrow_table("figure", "value", title=f"perf: {report.sessions} sessions, <= {report.max_rounds} revisions")
    table.add_row("sessions/s, batched across sessions", f"{report.batched_sessions_per_second:.3f}")
    table.add_row("sessions/s, one session at a time", f"{report.serial_sessions_per_second:.3f}")
    table.add_row("speed-up", f"{report.speedup:.2f}x")
    table.add_row("share of wall time outside model calls (batched)", f"{report.outside_model_share:.1%}")
    table.add_row("mean batch (batched)", ", ".join(f"{k} {v:.1f}" for k, v in report.mean_batch.items()))
    table.add_row("batching ceiling (model time, one row at a time / one batch)",
                  ", ".join(f"{k} {v:.2f}x" for k, v in report.batching_ceiling.items()))
    table.add_row("latency of one session (the longest of the batch, alone)",
                  f"{report.latency_seconds:.2f} s ({report.latency_rounds} images)")
    console.print(table)
