"""A task's exact verifier as a reward: 1.0 when the image satisfies the prompt, else 0.0.

It is ground truth for evaluation and a judge for search; it never sits in a model's inference
path (DESIGN.md). The verdicts come from the task (ShapeWorld's parses pixels), so this module
knows no domain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rewards.base import Scored


class VerifierReward:
    def __init__(self, verify: Callable[[str, np.ndarray], Any]):
        """`verify(prompt, image)` returns an object with `ok` and `reason` (tasks.base.Verdict)."""
        self.verify = verify

    def score(self, prompts: list[str], images: list[np.ndarray]) -> list[Scored]:
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
        verdicts = [self.verify(p, img) for p, img in zip(prompts, images)]
        return [Scored(value=float(v.ok), reason=v.reason) for v in verdicts]
