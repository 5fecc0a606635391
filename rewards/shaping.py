"""Self-correction shaping in the spirit of SCoRe: reward the improvement a critique brings, and
punish the ways a reflecting policy goes wrong (turning a right image wrong, calling a wrong
image right, and stopping early: a "right" on an image the reward is not sure of).

A critique of round t is judged by what follows it: with an edit, by the reward of round t+1
against round t; with a "right" verdict, by whether round t really was right. Rewards come from
a reward model (learned, or a judge); whether an image "is right" is reward >= threshold. The
verifier is for evaluation only, so nothing here calls it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field


class Shaping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, ge=0)  # weight of the improvement r_{t+1} - r_t
    flip_penalty: float = Field(1.0, ge=0)  # extra cost of right -> wrong
    false_right_penalty: float = Field(1.0, ge=0)  # extra cost of calling a wrong image right
    threshold: float = Field(0.5, ge=0, le=1)  # reward at or above which an image counts as right
    premature_penalty: float = Field(0.0, ge=0)  # cost of "right" on an image scored in [threshold, confident)
    confident: float = Field(0.8, ge=0, le=1)  # reward at or above which stopping is never premature
    unreadable: float = -1.0  # a critique that does not parse: the loop can do nothing with it

    def critique_reward(self, before: float, verdict: str | None, after: float | None = None) -> float:
        """The shaped reward of one critique of an image scored `before`.
        verdict "right": the reward of stopping here (`before`), minus the penalty if it was wrong,
        or the premature penalty if it was right but not surely (below `confident`).
        verdict "wrong": `after` (the score of the edited image) plus alpha times the improvement,
        minus the penalty if a right image became wrong. An unreadable critique (verdict None)
        earns `unreadable`."""
        if verdict == "right":
            if before < self.threshold:
                return before - self.false_right_penalty
            return before - (self.premature_penalty if before < self.confident else 0.0)
        if verdict == "wrong":
            if after is None:
                raise ValueError("a 'wrong' verdict is judged by the score of the image its edit made")
            broke = before >= self.threshold > after
            return after + self.alpha * (after - before) - (self.flip_penalty if broke else 0.0)
        return self.unreadable

    def session_rewards(self, scores: Sequence[float], verdicts: Sequence[str | None]) -> list[float]:
        """Shaped reward of each critique of a session: scores[t] is round t's reward, verdicts[t]
        the verdict of its critique (the last round's critique may have no edit after it)."""
        if len(verdicts) != len(scores):
            raise ValueError(f"{len(scores)} scores for {len(verdicts)} verdicts")
        out = []
        for t, verdict in enumerate(verdicts):
            after = scores[t + 1] if t + 1 < len(scores) else None
            if verdict == "wrong" and after is None:
                continue  # the loop stopped before carrying the edit out (max rounds): nothing to judge
            out.append(self.critique_reward(scores[t], verdict, after))
        return out
