"""The exact ShapeWorld verifier as a reward: 1.0 when the image satisfies the prompt, else 0.0.

It parses pixels, so it is ground truth for evaluation and a judge for search; it never sits in a
model's inference path (DESIGN.md)."""

from __future__ import annotations

import numpy as np

from rewards.base import Scored
from world import check_image


class VerifierReward:
    def score(self, prompts: list[str], images: list[np.ndarray]) -> list[Scored]:
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
        verdicts = [check_image(p, img) for p, img in zip(prompts, images)]
        return [Scored(value=float(v.ok), reason=v.reason) for v in verdicts]
