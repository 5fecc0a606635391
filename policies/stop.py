"""When the loop stops, and why: every stop has a recorded reason."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

StopReason = Literal["critic_satisfied", "score_threshold", "max_rounds", "no_improvement", "critique_unreadable",
                     "no_edit", "rejected_by_reviewer"]


class StopPolicy(BaseModel):
    """max_rounds counts revisions (0 = one-shot). score_threshold and patience read the judge's
    scores, one per image so far."""

    model_config = ConfigDict(extra="forbid")

    max_rounds: int = Field(4, ge=0)
    stop_when_right: bool = True
    score_threshold: float | None = Field(None, ge=0, le=1)
    patience: int | None = Field(None, ge=1)
    # the session's image: its last round's, or ("best") the round the judge scored highest (the latest on ties)
    final: Literal["last", "best"] = "last"

    def decide(self, revisions: int, verdict: str | None, scores: list[float], critique_error: str | None = None,
               instruction: str | None = None) -> StopReason | None:
        """Called after each critique: a reason to stop now, or None to revise."""
        if critique_error is not None:
            return "critique_unreadable"
        if verdict == "right" and self.stop_when_right:
            return "critic_satisfied"
        if self.score_threshold is not None and scores and scores[-1] >= self.score_threshold:
            return "score_threshold"
        if revisions >= self.max_rounds:
            return "max_rounds"
        if self.patience is not None and len(scores) > self.patience:
            if max(scores[-self.patience:]) <= max(scores[:-self.patience]):
                return "no_improvement"
        if not instruction:
            return "no_edit"  # nothing to act on (a right verdict the policy does not stop for, say)
        return None

    def final_round(self, scores: list[float], last: int) -> int:
        """The round whose image the session ends on; `scores` has the judge's score of every round."""
        if self.final == "last" or len(scores) != last + 1:
            return last
        return max(range(len(scores)), key=lambda k: (scores[k], k))

    @property
    def recursion_limit(self) -> int:
        """LangGraph super-steps a session can take: generate, critique, then (revise, critique)
        per revision, then finish; with room to spare. A runaway loop hits this, never 10k."""
        return 2 * self.max_rounds + 6
