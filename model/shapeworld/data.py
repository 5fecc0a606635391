"""Training examples for the generator, streamed from world/ (never stored).

Batch k of a run is a pure function of (seed, k): a resumed run sees exactly the data it
would have seen without the interruption.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from world import HELD_OUT, EditError, make_edit_pair, parse_edit, random_scene, render, sample_prompt, scene_for_prompt
from world.spec import FAMILIES


class GeneratorBatch(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    texts: list[str]  # prompt, or edit instruction
    sources: np.ndarray  # (B, 64, 64, 3) uint8; white where there is no source
    has_source: np.ndarray  # (B,) bool
    targets: np.ndarray  # (B, 64, 64, 3) uint8


def batch_rng(seed: int, stage: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step])


def leaks_held_out(instruction: str) -> bool:
    """A move instruction names a (colour, shape, relation) composition too; keep held-out
    ones out of training text as well."""
    edit = parse_edit(instruction)
    return edit.action == "move" and (edit.target.color, edit.target.shape, edit.relation) in HELD_OUT


def scene_batch(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random scenes, for the autoencoder."""
    return render([random_scene(rng) for _ in range(n)])


def generator_batch(rng: np.random.Generator, n: int, edit_share: float) -> GeneratorBatch:
    """A mix of text-to-image examples (train prompts of every family) and edit examples
    (a scene, natural or random, an applicable instruction, the scene after it)."""
    texts, sources, targets, has = [], [], [], []
    for _ in range(n):
        if rng.random() >= edit_share:
            prompt = sample_prompt(rng, FAMILIES[int(rng.integers(len(FAMILIES)))], "train")
            texts.append(prompt.text)
            sources.append(None)
            targets.append(scene_for_prompt(prompt, rng))
            has.append(False)
            continue
        while True:
            if rng.random() < 0.5:
                source = scene_for_prompt(sample_prompt(rng, FAMILIES[int(rng.integers(len(FAMILIES)))], "train"), rng)
            else:
                source = random_scene(rng)
            try:
                pair = make_edit_pair(rng, source)
            except EditError:
                continue
            if not leaks_held_out(pair.instruction):
                break
        texts.append(pair.instruction)
        sources.append(pair.source)
        targets.append(pair.target)
        has.append(True)
    target_images = render(targets)
    source_images = np.full_like(target_images, 255)
    idx = [i for i, s in enumerate(sources) if s is not None]
    if idx:
        source_images[idx] = render([sources[i] for i in idx])
    return GeneratorBatch(texts=texts, sources=source_images, has_source=np.array(has), targets=target_images)
