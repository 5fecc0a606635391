"""The reward interface: a batch of (prompt, image) pairs in, one score with its reason per pair out.

Batched because rewards sit behind a `BatchedWorker` like any model (a learned reward model or a
VLM judge runs one forward pass over many sessions' images). The reason travels with the score so
that a trajectory says why an image was kept, not only that it was.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Scored(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float = Field(allow_inf_nan=False)  # records are JSON: no NaN or inf
    reason: str


@runtime_checkable
class Reward(Protocol):
    def score(self, prompts: list[str], images: list[np.ndarray]) -> list[Scored]:
        """One Scored per (prompt, image) pair, in order."""
        ...


def as_scored(result: Scored | float) -> Scored:
    """A judge may be a Reward (Scored) or a bare `model.roles.Judge` (a float, with a `reason` attribute
    when the judge says how it scored, e.g. model/backends/served.py's JudgeScore)."""
    return result if isinstance(result, Scored) else Scored(value=float(result), reason=getattr(result, "reason", ""))
