"""What the loop asks of models, one small batched interface per role.

Every call takes lists (one entry per session) so that a worker can merge the calls of many
sessions into one forward pass. Images are uint8 (64, 64, 3) arrays (any HxWx3 for real
checkpoints); the loop stores them, models never see paths.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Generator(Protocol):
    def generate(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray]: ...


@runtime_checkable
class Editor(Protocol):
    def edit(self, images: list[np.ndarray], instructions: list[str], seeds: list[int]) -> list[np.ndarray]: ...


@runtime_checkable
class Critic(Protocol):
    def critique(self, prompts: list[str], images: list[np.ndarray],
                 history: list[list[tuple[np.ndarray, str]]] | None = None) -> list[str]:
        """Raw reflection text; policies.critique parses it (and the loop records failures). `history`:
        per row, the session's earlier rounds as (image, reflection), oldest first; None: none."""
        ...


@runtime_checkable
class Judge(Protocol):
    def score(self, prompts: list[str], images: list[np.ndarray]) -> list[float]:
        """Probability-like score in [0, 1] that the image satisfies the prompt."""
        ...
