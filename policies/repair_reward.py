"""The GRPO reward of a repair step (policies/rollout.py): the image it made is decoded with the
VQ and scored by the reward model (a learned one: the verifier is for evaluation), then shaped
(rewards/shaping.py) against the score of the image it started from:

    unreadable reflection   -> shaping.unreadable
    verdict "right"         -> before, minus the false-right or premature penalty
    verdict "wrong"         -> after + alpha (after - before), minus the flip penalty on right -> wrong

What the verifier says is logged beside it (eval/*), never rewarded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rewards.base import Reward
from rewards.shaping import Shaping


class ShapedRepairReward:
    """TRL reward function: reward_func(prompts, completions, **columns) -> one float per completion."""

    __name__ = "shaped_repair"  # TRL names the logged reward after it

    def __init__(self, reward: Reward, decode: Callable[[list[list[int]]], list[np.ndarray]], shaping: Shaping):
        self.reward, self.decode, self.shaping = reward, decode, shaping

    def __call__(self, prompts: list, completions: list, task_prompt: list[str], before: list[float],
                 verdict: list[str | None], made_codes: list[list[int] | None], correct: list[bool] | None = None,
                 log_metric: Callable[[str, float], None] | None = None, **_) -> list[float]:
        made = [i for i, c in enumerate(made_codes) if c is not None]
        after: dict[int, float] = {}
        images = self.decode([made_codes[i] for i in made]) if made else []
        if made:
            scores = self.reward.score([task_prompt[i] for i in made], list(images))
            after = {i: s.value for i, s in zip(made, scores)}
        shaped = []
        for i, v in enumerate(verdict):
            if v == "wrong" and i not in after:
                v = None  # said wrong without an edit the loop can carry out
            shaped.append(self.shaping.critique_reward(before[i], v, after.get(i)))
        if log_metric is not None:
            fixed = self.verified(task_prompt, made, images)
            for name, value in self.parts(verdict, before, after, shaped, correct, fixed):
                log_metric(name, value)
        return shaped

    @staticmethod
    def verified(task_prompt: list[str], made: list[int], images) -> dict[int, bool]:
        from world import check_image

        return {i: check_image(task_prompt[i], im).ok for i, im in zip(made, images)}

    def parts(self, verdict, before, after, shaped, correct, fixed) -> list[tuple[str, float]]:
        """Per-completion values, averaged by TRL over completions and processes."""
        out = []
        for i, v in enumerate(verdict):
            out += [("repair/unreadable", float(v is None)), ("repair/right", float(v == "right")),
                    ("repair/wrong", float(v == "wrong")), ("shaping/before", before[i]), ("shaping/reward", shaped[i])]
            if i in after:
                out += [("shaping/after", after[i]), ("shaping/improvement", after[i] - before[i])]
            if correct is not None:
                if v is not None:
                    out.append(("eval/verdict_matches_verifier", float((v == "right") == correct[i])))
                if not correct[i]:  # a wrong image: did this step repair it (by the verifier)?
                    out.append(("eval/repaired", float(fixed.get(i, False))))
                else:  # a right image: did this step break it?
                    out.append(("eval/broke", float(i in fixed and not fixed[i])))
        return out
