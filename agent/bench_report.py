"""The bench's report files: bench.json, bench.md (every figure by family and arm) and bench.png
(reflection's accuracy by round, one-shot and best-of-N as flat references)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agent.metrics import Metrics, fmt
from agent.plots import accuracy_by_round_png, save_png
from agent.store import atomic_write

if TYPE_CHECKING:
    from agent.bench import BenchReport


def gen_calls(m: Metrics) -> float:
    return m.calls_per_session.get("generator", 0.0) + m.calls_per_session.get("editor", 0.0)


COLUMNS = ("family", "arm", "n", "Acc@0", "Acc@final", "delta", "i->c", "c->i", "repair", "mean rounds",
           "gen+edit calls", "all calls", "model s/session", "wall s")


def rows(report: BenchReport) -> list[list[str]]:
    """One row per family and arm, 'overall' last; wall time is the arm's, on its overall row."""
    families = list(report.arms["reflection"].metrics)
    out = []
    for family in families:
        for arm in report.arms.values():
            m = arm.metrics.get(family)
            if m is None:
                continue
            out.append([family, arm.name, str(m.sessions), fmt(m.acc0), fmt(m.acc_final), fmt(m.delta, signed=True),
                        fmt(m.i_to_c), fmt(m.c_to_i), fmt(m.repair), f"{m.mean_rounds:.2f}", f"{gen_calls(m):.2f}",
                        f"{sum(m.calls_per_session.values()):.2f}", f"{m.seconds_per_session:.2f}",
                        f"{arm.wall_seconds:.1f}" if family == "overall" else ""])
    return out


def markdown(report: BenchReport) -> str:
    lines = [f"# refloop bench: {report.suite}, {report.sessions} sessions, up to {report.max_rounds} revisions",
             "", f"Budget: N = {report.budget} ({report.budget_rule}).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(report)]
    lines += ["", "model s/session: seconds inside model calls as the sessions saw them (batched calls overlap); "
              "wall s: the whole arm.", "", "| target | value | goal | met |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {fmt(t.value)} | {t.goal} | {'yes' if t.met else 'no'} |" for t in report.targets]
    return "\n".join(lines) + "\n"


def accuracy_plot(report: BenchReport) -> bytes:
    """Reflection's accuracy by round per family, with one-shot and best-of-N as flat references."""
    refl = report.arms["reflection"].metrics
    series = {f: m.acc_by_round for f, m in refl.items() if f != "overall"}
    series["overall"] = refl["overall"].acc_by_round
    depth = max(len(refl["overall"].acc_by_round), 1)
    for name, label in (("one_shot", "one-shot (overall)"), ("best_of_n", f"best-of-{report.budget} (overall)"),
                        ("best_of_n_oracle", f"best-of-{report.budget}, oracle pick (upper bound)")):
        if name in report.arms and report.arms[name].metrics["overall"].acc_final is not None:
            series[label] = [report.arms[name].metrics["overall"].acc_final] * depth
    return accuracy_by_round_png(series, title=f"reflection on {report.suite}: accuracy by round")


def write_report(report: BenchReport, out: Path) -> None:
    atomic_write(out / "bench.json", report.model_dump_json(indent=2).encode())
    atomic_write(out / "bench.md", markdown(report).encode())
    save_png(accuracy_plot(report), out / "bench.png")
