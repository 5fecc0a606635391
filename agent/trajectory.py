"""The trajectory schema: what one run, one session and one round of the loop leave on disk.

These pydantic models are the one schema for the store, the exports, `inspect` and the viewer.
Every record carries `schema_version`: a reader upgrades older records through `MIGRATIONS`
and refuses newer ones, so an old refloop never silently drops fields it does not know.
Images are paths RELATIVE to the run directory, so a run can be moved or copied whole.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from policies.stop import StopReason

SCHEMA_VERSION = 1
# MIGRATIONS[v] turns a version-v record (a dict) into a version v+1 one; none exist yet.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

# Session ids become file names: letters, digits, '-', '_', '.', no leading dot, at most 200 chars.
SESSION_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
STOP_REASONS = get_args(StopReason)  # known, not enforced (a failed session carries `error` instead)


def is_safe_id(session_id: str) -> bool:
    return isinstance(session_id, str) and SESSION_ID.fullmatch(session_id) is not None


def _safe_id(value: str) -> str:
    if not is_safe_id(value):
        raise ValueError(f"unsafe session id {value!r}: use letters, digits, '-', '_', '.', no leading dot")
    return value


def _relative(value: str) -> str:
    """A run-relative POSIX path: not absolute, no '..', no backslashes (that would escape the run)."""
    p = PurePosixPath(value)
    if not value or "\\" in value or p.is_absolute() or ".." in p.parts:
        raise ValueError(f"image path {value!r} must be relative to the run directory, without '..'")
    return value


def _finite(value: float) -> float:
    # JSON has no NaN/inf: pydantic would write null and fail to read it back.
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return value


RelPath = Annotated[str, AfterValidator(_relative)]
Finite = Annotated[float, AfterValidator(_finite)]
SessionId = Annotated[str, AfterValidator(_safe_id)]


class Versioned(BaseModel):
    """Base of every stored record: strict fields, and a version check before anything else."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "schema_version" not in data:
            return data
        version = data["schema_version"]
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"invalid schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise ValueError(f"record has schema_version {version}, newer than this refloop reads "
                             f"({SCHEMA_VERSION}); upgrade refloop to read it")
        while version < SCHEMA_VERSION:
            if version not in MIGRATIONS:
                raise ValueError(f"no migration from schema_version {version} to {version + 1}")
            data = {**MIGRATIONS[version](dict(data)), "schema_version": version + 1}
            version += 1
        return data


class RoundRecord(BaseModel):
    """One image of a session and what was said about it. Round 0 is the first generation,
    round k the k-th revision; the critique of round k asks for the edit that makes round k+1."""

    model_config = ConfigDict(extra="forbid")
    index: int = Field(ge=0)
    image: RelPath
    critique: str | None = None  # the raw text the critic wrote
    verdict: Literal["right", "wrong"] | None = None
    instruction: str | None = None  # the edit the critic asked for
    critique_error: str | None = None  # why the critique did not parse
    critique_by: Literal["model", "human"] = "model"  # a person may write it (replay --critique, run --review)
    rewards: dict[str, Finite] = {}  # e.g. {"verifier": 1.0, "judge": 0.83}
    correct: bool | None = None  # ground-truth verdict, when known
    timings: dict[str, Finite] = {}  # seconds per role, e.g. {"generate": 0.4}
    calls: dict[str, int] = {}  # model calls per role, e.g. {"generator": 1}
    candidates: list[RelPath] = []  # every image a search produced; `image` is the one kept
    candidate_scores: list[Finite] = []  # the judge's score of each candidate, in the same order
    judge_reason: str | None = None  # why the judge scored the kept image as it did


class SessionRecord(Versioned):
    """One prompt through the loop: its rounds in order, how it ended, where it was forked from."""

    id: SessionId
    prompt: str
    family: str | None = None
    seed: int
    status: Literal["running", "done", "failed"] = "running"
    rounds: list[RoundRecord] = []
    stop_reason: str | None = None
    final_image: RelPath | None = None
    parent_id: SessionId | None = None  # set for a session forked from another
    fork_round: int | None = Field(default=None, ge=0)
    error: str | None = None
    started_at: float | None = None  # unix times
    finished_at: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SessionRecord:
        for k, r in enumerate(self.rounds):
            if r.index != k:
                raise ValueError(f"session {self.id}: round at position {k} has index {r.index}; "
                                 "indices must be 0..n-1 in order")
        if (self.parent_id is None) != (self.fork_round is None):
            raise ValueError(f"session {self.id}: parent_id and fork_round go together")
        if self.status == "done" and self.stop_reason is None:
            raise ValueError(f"session {self.id}: a done session needs a stop_reason")
        if self.status == "failed" and self.error is None:
            raise ValueError(f"session {self.id}: a failed session needs an error")
        return self

    @property
    def final_round(self) -> RoundRecord | None:
        """The round whose image the session ended on (the last one with `final_image`; else the last)."""
        ending = [r for r in self.rounds if self.final_image is not None and r.image == self.final_image]
        return ending[-1] if ending else (self.rounds[-1] if self.rounds else None)


class RunManifest(Versioned):
    """What a run was made with, written once when the run directory is created."""

    run_id: str
    created_at: float
    config: dict[str, Any] = {}
    models: dict[str, dict[str, Any]] = {}  # role -> {"path": ..., "hash": ...}
    git_commit: str | None = None
    seed: int
    refloop_version: str


class SessionSpec(BaseModel):
    """One session to run, as a run's prompts.jsonl keeps it (the runner's input)."""

    id: str
    prompt: str
    seed: int
    family: str | None = None
