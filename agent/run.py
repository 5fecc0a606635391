"""A run directory end to end, so that `run`, `bench` and `replay` are thin callers.

    run = Run.create(path, cfg, specs, models)   # manifest.json, prompts.jsonl; the writer lock
    run = Run.open(path)                         # its saved config and prompts; the writer lock
    rt = run.runtime(image_model, critic, judge) # the task's verifier and checks, workers, history
    records = run.execute(rt)                    # the graph on the checkpointer, then sessions.jsonl
    run.close()                                  # the lock released

From `refloop run` to sessions.jsonl: agent/cli_run.py -> agent/run.py -> agent/runner.py
(sessions, checkpointer, workers) -> agent/graph.py (the loop) and agent/round.py (the round in
flight) -> agent/store.py (finished rounds) and agent/trajectory.py (their schema); README.md,
"How a session runs". Bad input raises agent.errors.UsageError before anything is
written; another writer raises RunBusy (agent/lock.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from agent.config import RunConfig
from agent.graph import Runtime
from agent.store import RunStore, atomic_write
from agent.trajectory import RunManifest, SessionRecord, SessionSpec
from tasks import Task, load_task

PROMPTS = "prompts.jsonl"  # a run's sessions (id, prompt, seed, family), written when it is created


def refloop_version() -> str:
    try:
        return version("refloop")
    except PackageNotFoundError:
        return "unknown"


class Run:
    """One run directory, opened for writing: its config, its task, its sessions."""

    def __init__(self, store: RunStore, cfg: RunConfig, specs: list[SessionSpec]):
        self.store, self.cfg, self.specs = store, cfg, specs
        self.task: Task = load_task(cfg.task)

    @property
    def root(self) -> Path:
        return self.store.root

    @classmethod
    def create(cls, path: Path, cfg: RunConfig, specs: list[SessionSpec], models: dict[str, dict] | None = None) -> Run:
        """A new run directory: the manifest (config, model folders and hashes), then its prompts."""
        manifest = RunManifest(run_id=Path(path).name, created_at=time.time(), config=cfg.model_dump(mode="json"),
                               seed=cfg.seed, models=models or {}, refloop_version=refloop_version())
        store = RunStore.create(path, manifest)
        atomic_write(store.root / PROMPTS, "".join(s.model_dump_json() + "\n" for s in specs).encode())
        return cls(store, cfg, specs)

    @classmethod
    def open(cls, path: Path) -> Run:
        """An existing run, to finish or fork: what was saved is checked (as a reader) before the
        writer lock is taken, so a broken run is refused without waiting on another writer."""
        from agent.cli_common import run_config, saved_specs

        saved = RunStore.open(path)
        cfg = run_config(saved.manifest.config, f"the config saved in {saved.root}")
        specs = saved_specs(saved)
        return cls(RunStore.open(path, writer=True), cfg, specs)

    def runtime(self, image_model, critic, judge=None, cfg: RunConfig | None = None) -> Runtime:
        """The models behind batched workers, with this run's task (or an arm's config in a bench)."""
        from agent.runner import make_runtime

        cfg = cfg or self.cfg
        return make_runtime(self.store, image_model, image_model, critic, cfg.stop, judge=judge,
                            max_batch=cfg.max_batch, search=cfg.search, task=self.task, history=cfg.history)

    def execute(self, rt: Runtime, specs: list[SessionSpec] | None = None, concurrency: int | None = None,
                on_done: Callable[[SessionRecord], None] | None = None, reviewer=None) -> list[SessionRecord]:
        """Run (or finish) the sessions, then write sessions.jsonl."""
        from agent.runner import run_sessions

        records = asyncio.run(run_sessions(rt, specs or self.specs, concurrency or self.cfg.concurrency,
                                           on_done=on_done, reviewer=reviewer))
        self.store.write_jsonl()
        return records

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
