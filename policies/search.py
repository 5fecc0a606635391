"""Search: several candidate images per round, one kept, picked by a judge.

The first generation makes `best_of` candidates; each revision makes `revisions` candidate edits of
the current image. Candidate k of a round draws its noise from `candidate_seed(round_seed, k)`, so
candidate 0 is exactly the image the loop makes without search, and a rerun makes the same ones.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SEED_STRIDE = 1_000_003  # a prime far above any round offset: candidates never share a seed with a round

# "verifier": the exact ShapeWorld verifier; "model": the judge in models.judge (a learned reward model or a VLM)
Judge = Literal["verifier", "model"]


class SearchPolicy(BaseModel):
    """Candidates per round and who picks among them. The defaults (one candidate, no judge) are
    the plain loop. Budgets count model calls: a round of k candidates costs k generator or editor
    calls and k judge calls."""

    model_config = ConfigDict(extra="forbid")

    best_of: int = Field(1, ge=1)  # candidates of the first generation
    revisions: int = Field(1, ge=1)  # candidate edits per revision
    judge: Judge | None = None

    @model_validator(mode="after")
    def _judge_for_search(self) -> SearchPolicy:
        if self.judge is None and (self.best_of > 1 or self.revisions > 1):
            raise ValueError("best_of or revisions above 1 needs a judge to pick the candidate (judge: verifier)")
        return self

    def width(self, round_index: int) -> int:
        """Candidates made for round `round_index` (0 = the first generation)."""
        return self.best_of if round_index == 0 else self.revisions


def candidate_seed(round_seed: int, index: int) -> int:
    return round_seed + index * SEED_STRIDE


def pick(scores: list[float]) -> int:
    """Index of the highest score; ties go to the lowest index, so the pick is deterministic."""
    if not scores:
        raise ValueError("no candidates to pick from")
    return max(range(len(scores)), key=lambda k: (scores[k], -k))
