"""Drawings with the unified model's own kind of flaw, for the critic: patch-level hybrids.

The model draws code by code, and each code is one 8x8 patch, so its failed drawings are mostly
shapes whose patches disagree: a circle with one square corner, a triangle half blue and half
green, a stray piece of a shape on the border (dev, 15,000-step model: 129 of its 336 wrong
drawings; the critic called 39% of them right, having seen almost none in training: the
synthetic stream renders clean shapes only). Here a right scene is encoded, some patches of one
object are taken from the same scene with that object in another shape or colour (or a piece of
it is copied into empty space), the codes are decoded, and the world's verifier labels what the
pixels show: the label is of the image, whatever the recipe meant it to be. Measured: 3,072 of
them in a self-play round did not lift the verdicts on its own drawings (README), so the shipped
recipe leaves `selfplay.flawed` at 0.
"""

from __future__ import annotations

import numpy as np
import torch

from model.unified.tasks import reading_order, train_prompt
from model.unified.vq import decode, encode
from tasks.shapeworld import label_critique
from world import parse_image, render, scene_for_prompt
from world.spec import COLOR_NAMES, SHAPES


def variant(scene, k: int, rng: np.random.Generator):
    """The scene with object k in another shape or another colour (same place, same size)."""
    obj = scene.objects[k]
    if rng.random() < 0.5:
        obj = obj.model_copy(update={"shape": rng.choice([s for s in SHAPES if s != obj.shape])})
    else:
        obj = obj.model_copy(update={"color": rng.choice([c for c in COLOR_NAMES if c != obj.color])})
    return scene.model_copy(update={"objects": (*scene.objects[:k], obj, *scene.objects[k + 1:])})


def mix_codes(codes: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Some (not all) of the patches where the two differ taken from `other`; with one differing
    patch, that patch copied into an empty one instead (a stray piece)."""
    out = codes.copy()
    differ = np.flatnonzero(codes != other)
    if len(differ) >= 2:
        take = rng.choice(differ, size=int(rng.integers(1, len(differ))), replace=False)
        out[take] = other[take]
        return out
    background = codes == np.bincount(codes).argmax()  # the most common code: white
    blank, inked = np.flatnonzero(background), np.flatnonzero(~background)
    if len(blank) and len(inked):
        out[rng.choice(blank)] = codes[rng.choice(inked)]
    return out


def flawed_rows(model, n: int, seed: int, batch: int = 64) -> tuple[list, dict]:
    """`n` reflect rows on hybrid drawings of train prompts, labelled by the verifier, and their stats."""
    rng = np.random.default_rng([seed, 7])
    rows, readable_wrong, unreadable = [], 0, 0
    for b in range(0, n, batch):
        prompts = [train_prompt(rng) for _ in range(min(batch, n - b))]
        scenes = [scene_for_prompt(p, rng) for p in prompts]
        others = [variant(s, int(rng.integers(len(s.objects))), rng) for s in scenes]
        codes = encode(model.vq, render(scenes)).numpy()
        other = encode(model.vq, render(others)).numpy()
        mixed = np.stack([mix_codes(c, o, rng) for c, o in zip(codes, other)])
        images = decode(model.vq, torch.from_numpy(mixed))
        seen = encode(model.vq, images).tolist()  # what the critic gets: the image, encoded again
        for prompt, image, source in zip(prompts, images, seen):
            read = parse_image(image)
            label = label_critique(prompt, reading_order(read.objects), read.blobs)
            unreadable += bool(read.blobs)
            readable_wrong += label.verdict == "wrong" and not read.blobs
            rows.append(model.layout.example("reflect", prompt, source, None, label.text))
    return rows, {"flawed": n, "flawed_unreadable": unreadable, "flawed_readable_wrong": readable_wrong}
