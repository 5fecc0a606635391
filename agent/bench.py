"""Benchmarks of the loop: what reflection buys over one-shot and over best-of-N at equal budget,
and what the orchestration costs.

`run_bench` runs its arms on the same prompts and seeds, each a normal run directory:
one-shot (no revision), best-of-N with N the reflection arm's generator + editor call budget,
picked by the model judge (the config's `models.judge`, else the embedded model's own verdict
probability), best-of-N picked by the verifier (an oracle: an upper bound, not a competitor),
and reflection. Candidate 0 of best-of-N is the one-shot image
(policies/search.py), so the three arms start from the same first image.

`run_perf` times sessions per second with cross-session batching against one session at a time,
the share of wall time outside model calls, and the latency of one session.

Both take a `RuntimeFactory`, so tests can run them on tiny models and scripted critics.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.bench_report import write_report
from agent.config import RunConfig
from agent.graph import Runtime
from agent.metrics import Metrics, by_family
from agent.run import Run
from agent.runner import SessionSpec, run_sessions
from agent.store import RunStore, atomic_write
from agent.trajectory import SessionRecord
from model.worker import BusyClock
from policies.search import SearchPolicy
from tasks import load_task

RuntimeFactory = Callable[[RunStore, RunConfig], Runtime]
ARMS = ("one_shot", "best_of_n", "best_of_n_oracle", "reflection")
BUDGET_RULE = ("best-of-N gets N = the generator + editor calls the reflection arm may make "
               "(best_of + max_rounds x revisions; 1 + max_rounds without search); "
               "critic and judge calls are reported, not budgeted")


class Arm(BaseModel):
    name: str
    run_dir: str
    wall_seconds: float
    stop: dict[str, Any]
    search: dict[str, Any]
    metrics: dict[str, Metrics]  # by family, then "overall"


class Target(BaseModel):
    name: str
    value: float | None  # None: unknown (no ground truth)
    goal: str
    met: bool


class BenchReport(BaseModel):
    suite: str
    sessions: int
    max_rounds: int
    budget: int  # N of best-of-N
    budget_rule: str = BUDGET_RULE
    arms: dict[str, Arm]
    targets: list[Target]


class PerfReport(BaseModel):
    sessions: int
    max_rounds: int
    batched_wall_seconds: float  # concurrency = max_batch = sessions
    serial_wall_seconds: float  # concurrency = max_batch = 1
    batched_sessions_per_second: float
    serial_sessions_per_second: float
    speedup: float
    model_busy_seconds: float  # batched run: wall time with at least one model call running
    outside_model_share: float  # batched run: 1 - model_busy / wall
    mean_batch: dict[str, float]  # batched run: rows per model call, by role
    latency_seconds: float  # alone: the session that made the most images in the batched run
    latency_rounds: int  # images that session made (the critic may stop it early)
    # model time one row at a time / one batch, on the same rows, by role: the most that batching
    # across sessions can gain on this machine (compute-bound models on a CPU gain little)
    batching_ceiling: dict[str, float] = {}


# -- arms ----------------------------------------------------------------------------------------

def reflection_budget(cfg: RunConfig, max_rounds: int) -> int:
    """Generator + editor calls a reflection session may make at most."""
    return cfg.search.best_of + max_rounds * cfg.search.revisions


def bench_judge(cfg: RunConfig):
    """The judge config best-of-N picks with: the config's, else the embedded model's own."""
    return cfg.models.judge or (cfg.models.critic if cfg.models.critic.kind == "unified" else None)


def arm_configs(cfg: RunConfig, max_rounds: int) -> dict[str, RunConfig]:
    """The three arms: the config's models and batching, each with its own stop and search policy."""
    def arm(rounds: int, search: SearchPolicy) -> RunConfig:  # ending on the best round needs a judge
        stop = {"max_rounds": rounds, "final": cfg.stop.final if search.judge else "last"}
        return cfg.model_copy(update={"stop": cfg.stop.model_copy(update=stop), "search": search})

    n = reflection_budget(cfg, max_rounds)
    arms = {"one_shot": arm(0, SearchPolicy())}
    judge = bench_judge(cfg)
    verifier = load_task(cfg.task).has_verifier
    if judge is not None:  # the same judge the loop could use: a fair competitor
        arms["best_of_n"] = arm(0, SearchPolicy(best_of=n, judge="model")).model_copy(
            update={"models": cfg.models.model_copy(update={"judge": judge})})
        if verifier:
            arms["best_of_n_oracle"] = arm(0, SearchPolicy(best_of=n, judge="verifier"))
    elif verifier:
        arms["best_of_n"] = arm(0, SearchPolicy(best_of=n, judge="verifier"))
    else:
        raise ValueError(f"best-of-N needs a judge: the {cfg.task} task has no verifier, so give one in models.judge")
    arms["reflection"] = arm(max_rounds, cfg.search)
    return arms


def create_run(path: Path, cfg: RunConfig, specs: list[SessionSpec], models: dict[str, dict]) -> RunStore:
    """A run directory as `refloop run` makes it (agent/run.py), so inspect and resume work on an arm."""
    return Run.create(path, cfg, specs, models).store


def run_timed(rt: Runtime, specs: list[SessionSpec], concurrency: int) -> tuple[list[SessionRecord], float]:
    t0 = time.perf_counter()
    try:
        records = asyncio.run(run_sessions(rt, specs, concurrency))
        seconds = time.perf_counter() - t0
        rt.store.write_jsonl()
    finally:
        rt.store.close()  # the run's writer lock: the arm is written
    return records, seconds


def run_arm(name: str, cfg: RunConfig, specs: list[SessionSpec], out: Path, factory: RuntimeFactory,
            models: dict[str, dict]) -> Arm:
    store = create_run(out / name, cfg, specs, models)
    records, seconds = run_timed(factory(store, cfg), specs, cfg.concurrency)
    return Arm(name=name, run_dir=str(store.root), wall_seconds=seconds, stop=cfg.stop.model_dump(),
               search=cfg.search.model_dump(), metrics=by_family(records))


def targets(arms: dict[str, Arm]) -> list[Target]:
    """The issue's targets for the embedded models on dev, checked on whatever was measured."""
    refl, best = arms["reflection"].metrics["overall"], arms["best_of_n"].metrics["overall"]
    known = refl.acc_final is not None and best.acc_final is not None  # unknown without a verifier or judge
    margin = refl.acc_final - best.acc_final if known else None
    return [Target(name="reflection Acc@final", value=refl.acc_final, goal=">= 0.90",
                   met=refl.acc_final is not None and refl.acc_final >= 0.90),
            Target(name="reflection delta c->i", value=refl.c_to_i, goal="<= 0.01",
                   met=refl.c_to_i is not None and refl.c_to_i <= 0.01),
            Target(name="reflection - best-of-N Acc@final (same judge)", value=margin, goal=">= 0.05",
                   met=margin is not None and margin >= 0.05)]


def run_bench(cfg: RunConfig, specs: list[SessionSpec], out: Path, factory: RuntimeFactory, suite: str,
              max_rounds: int, models: dict[str, dict] | None = None,
              on_arm: Callable[[Arm], None] | None = None) -> BenchReport:
    """Run the three arms under `out` and write bench.json, bench.md and bench.png there."""
    arms = {}
    for name, arm_cfg in arm_configs(cfg, max_rounds).items():
        arms[name] = run_arm(name, arm_cfg, specs, out, factory, models or {})
        if on_arm:
            on_arm(arms[name])
    report = BenchReport(suite=suite, sessions=len(specs), max_rounds=max_rounds,
                         budget=reflection_budget(cfg, max_rounds), arms=arms, targets=targets(arms))
    write_report(report, out)
    return report


# -- performance ---------------------------------------------------------------------------------

def perf_configs(cfg: RunConfig, sessions: int, max_rounds: int) -> dict[str, RunConfig]:
    stop = cfg.stop.model_copy(update={"max_rounds": max_rounds})
    return {"batched": cfg.model_copy(update={"stop": stop, "concurrency": sessions, "max_batch": sessions}),
            "serial": cfg.model_copy(update={"stop": stop, "concurrency": 1, "max_batch": 1})}


def timed_runtime(factory: RuntimeFactory, store: RunStore, cfg: RunConfig) -> tuple[Runtime, BusyClock]:
    """A runtime whose workers share one clock of model-call time."""
    rt, clock = factory(store, cfg), BusyClock()
    for worker in (rt.generator, rt.editor, rt.critic, rt.judge):
        if worker is not None:
            worker.clock = clock
    return rt, clock


def warm_up(cfg: RunConfig, spec: SessionSpec, factory: RuntimeFactory) -> None:
    """One throwaway session, so that first-call costs (allocations, lazy init) land in no figure."""
    with tempfile.TemporaryDirectory() as tmp:
        one = cfg.model_copy(update={"stop": cfg.stop.model_copy(update={"max_rounds": 1})})
        run_timed(factory(create_run(Path(tmp) / "warm-up", one, [spec], {}), one), [spec], 1)


def batching_ceiling(rt: Runtime, specs: list[SessionSpec], forget: Callable[[], None] = lambda: None
                     ) -> dict[str, float]:
    """Generator and critic on the sessions' first rows, called with all rows at once and one row
    at a time: their ratio bounds what any batching of those calls can gain here."""

    def ratio(fn, rows):
        forget()
        t0 = time.perf_counter()
        out = fn(rows)
        batched = time.perf_counter() - t0
        forget()
        t0 = time.perf_counter()
        for row in rows:
            fn([row])
        return out, (time.perf_counter() - t0) / batched

    images, generator = ratio(rt.generator.fn, [(s.prompt, s.seed) for s in specs])
    _, critic = ratio(rt.critic.fn, [(s.prompt, image, None) for s, image in zip(specs, images)])
    return {"generator": generator, "critic": critic}


def run_perf(cfg: RunConfig, specs: list[SessionSpec], out: Path, factory: RuntimeFactory, max_rounds: int,
             models: dict[str, dict] | None = None, forget: Callable[[], None] = lambda: None) -> PerfReport:
    """Time `specs` batched and one at a time (each a run directory under `out`), and one session
    alone; write perf.json. `forget` drops what the models remember between calls (the unified
    model's reflections): the second arm runs the same sessions, and a remembered answer is no model
    call (measured: one at a time looked 2x faster, batching 1.5x instead of 3.5x)."""
    warm_up(cfg, specs[0], factory)
    walls, clocks, mean_batch, rounds = {}, {}, {}, {}
    for name, run_cfg in perf_configs(cfg, len(specs), max_rounds).items():
        forget()
        rt, clocks[name] = timed_runtime(factory, create_run(out / f"perf_{name}", run_cfg, specs, models or {}),
                                         run_cfg)
        records, walls[name] = run_timed(rt, specs, run_cfg.concurrency)
        if name == "batched":
            mean_batch = {w.name: w.stats.mean_batch for w in (rt.generator, rt.editor, rt.critic, rt.judge)
                          if w is not None and w.stats.batches}
            rounds = {r.id: len(r.rounds) for r in records}
    # latency: the session that went furthest in the batched run (the full max_rounds when one did), alone
    longest = max(specs, key=lambda s: rounds.get(s.id, 0))
    serial = perf_configs(cfg, 1, max_rounds)["serial"]
    alone = create_run(out / "perf_latency", serial, [longest], models or {})
    forget()
    records, latency = run_timed(factory(alone, serial), [longest], 1)
    n = len(specs)
    report = PerfReport(
        sessions=n, max_rounds=max_rounds, batched_wall_seconds=walls["batched"], serial_wall_seconds=walls["serial"],
        batched_sessions_per_second=n / walls["batched"], serial_sessions_per_second=n / walls["serial"],
        speedup=walls["serial"] / walls["batched"], model_busy_seconds=clocks["batched"].seconds,
        outside_model_share=max(0.0, 1 - clocks["batched"].seconds / walls["batched"]), mean_batch=mean_batch,
        latency_seconds=latency, latency_rounds=len(records[0].rounds),
        batching_ceiling=batching_ceiling(factory(alone, serial), specs, forget))
    atomic_write(out / "perf.json", report.model_dump_json(indent=2).encode())
    return report


def perf_specs(specs: list[SessionSpec], n: int) -> list[SessionSpec]:
    """n sessions taken round-robin across families, so that every family is in the mix."""
    groups: dict[str, list[SessionSpec]] = {}
    for s in specs:
        groups.setdefault(s.family or "", []).append(s)
    mixed: list[SessionSpec] = []
    for k in range(max(map(len, groups.values()), default=0)):
        mixed += [group[k] for group in groups.values() if k < len(group)]
    return mixed[:n]
