"""Synthetic scenes: random ones, and correct ones for any prompt (relations by construction).

Objects are placed by rejection sampling; sizes shrink towards MIN_SIZE when a crowded
layout keeps failing, so every valid prompt (<= 6 objects) gets a scene.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from world.grammar import Prompt, parse_prompt
from world.scene import Obj, Scene, boxes_clear
from world.spec import CANVAS, COLOR_NAMES, MAX_OBJECTS, MAX_SIZE, MIN_GAP, MIN_SIZE, SHAPES

Region = tuple[int, int, int, int]  # x0, y0, x1, y1 that a bbox must lie within (end-exclusive)
FULL: Region = (0, 0, CANVAS, CANVAS)


class PlacementError(RuntimeError):
    """No room for the requested objects (after many tries)."""


def _try_place(rng: np.random.Generator, specs, regions, fixed, max_size) -> list[Obj] | None:
    placed: list[Obj] = []
    boxes = [o.box for o in fixed]
    for (shape, color), (x0, y0, x1, y1) in zip(specs, regions):
        for _ in range(40):
            size = int(rng.integers(MIN_SIZE, max_size + 1))
            if x1 - x0 < size or y1 - y0 < size:
                size = MIN_SIZE
                if x1 - x0 < size or y1 - y0 < size:
                    return None
            x = int(rng.integers(x0, x1 - size + 1))
            y = int(rng.integers(y0, y1 - size + 1))
            box = (x, y, x + size, y + size)
            if all(boxes_clear(box, b) for b in boxes):
                placed.append(Obj(shape=shape, color=color, x=x, y=y, size=size))
                boxes.append(box)
                break
        else:
            return None
    return placed


def place(
    rng: np.random.Generator,
    specs: Sequence[tuple[str, str]],
    regions: Sequence[Region] | None = None,
    fixed: Sequence[Obj] = (),
    tries: int = 60,
) -> list[Obj]:
    """Objects of the given (shape, colour) inside their regions, clear of `fixed` and each other."""
    regions = regions or [FULL] * len(specs)
    for attempt in range(tries):
        max_size = max(MIN_SIZE, MAX_SIZE - attempt * (MAX_SIZE - MIN_SIZE) // (tries // 2))
        placed = _try_place(rng, specs, regions, fixed, max_size)
        if placed is not None:
            return placed
    raise PlacementError(f"no room for {len(specs)} objects beside {len(fixed)} others")


def split_regions(rng: np.random.Generator, relation: str, n_a: int, n_b: int) -> tuple[Region, Region]:
    """Two regions, A's and B's, on either side of a random line, so that `A relation B` holds
    for every pair by construction (box separation >= MIN_SIZE keeps centroids far apart)."""
    need_a, need_b = _room(n_a), _room(n_b)
    cut = int(rng.integers(need_a, CANVAS - need_b + 1))
    first, second = (0, cut - MIN_GAP // 2), (cut + MIN_GAP // 2, CANVAS)
    if relation in ("to the right of", "below"):  # A goes after the cut
        need_a, need_b = need_b, need_a
        cut = int(rng.integers(need_a, CANVAS - need_b + 1))
        first, second = (cut + MIN_GAP // 2, CANVAS), (0, cut - MIN_GAP // 2)
    if relation in ("to the left of", "to the right of"):
        return (first[0], 0, first[1], CANVAS), (second[0], 0, second[1], CANVAS)
    return (0, first[0], CANVAS, first[1]), (0, second[0], CANVAS, second[1])


def _room(n: int) -> int:
    """Band width that holds n objects: one column fits 4 of the smallest."""
    return MIN_SIZE + MIN_GAP if n <= 4 else 2 * (MIN_SIZE + MIN_GAP)


def colors_for(rng: np.random.Generator, group_color: str | None, count: int) -> list[str]:
    if group_color is not None:
        return [group_color] * count
    return [str(c) for c in rng.choice(COLOR_NAMES, size=count)]


def scene_for_prompt(prompt: str | Prompt, rng: np.random.Generator) -> Scene:
    """A random scene that satisfies the prompt exactly (uncoloured groups get random colours)."""
    prompt = parse_prompt(prompt)
    specs = [[(g.shape, c) for c in colors_for(rng, g.color, g.count)] for g in prompt.groups]
    if prompt.relation is None:
        objects = place(rng, [s for group in specs for s in group])
    else:
        for _ in range(20):
            ra, rb = split_regions(rng, prompt.relation, len(specs[0]), len(specs[1]))
            try:
                objects = place(rng, specs[0] + specs[1], [ra] * len(specs[0]) + [rb] * len(specs[1]))
                break
            except PlacementError:
                continue
        else:
            raise PlacementError(f"no layout found for {prompt.text!r}")
    order = rng.permutation(len(objects))
    return Scene(objects=tuple(objects[i] for i in order))


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """1 to 6 objects of random shape and colour anywhere."""
    n = n_objects or int(rng.integers(1, MAX_OBJECTS + 1))
    specs = [(str(rng.choice(SHAPES)), str(rng.choice(COLOR_NAMES))) for _ in range(n)]
    return Scene(objects=tuple(place(rng, specs)))


PERTURBATIONS = ("drop", "add", "recolor", "reshape", "move", "flip_relation")


def perturb_scene(
    prompt: str | Prompt, scene: Scene, rng: np.random.Generator, kind: str | None = None
) -> tuple[Scene, str]:
    """A near miss: `scene` changed in one way so that it no longer satisfies `prompt`.
    Returns (scene, kind). For critic data (what is wrong) and for testing the verifier."""
    from world.verify import check_scene  # verify does not import synth; keep it that way

    prompt = parse_prompt(prompt)
    n = len(scene.objects)
    cannot = {"drop": n == 1, "add": n == MAX_OBJECTS, "flip_relation": prompt.relation is None}
    applicable = [k for k in PERTURBATIONS if not cannot.get(k, False)]
    if kind is not None and kind not in applicable:
        raise ValueError(f"perturbation {kind!r} does not apply to {prompt.text!r} with {n} object(s)")
    for _ in range(200):
        k = kind or str(rng.choice(applicable))
        objs = list(scene.objects)
        i = int(rng.integers(len(objs)))
        try:
            if k == "drop":
                objs.pop(i)
            elif k == "add":
                objs += place(rng, [(str(rng.choice(SHAPES)), str(rng.choice(COLOR_NAMES)))], fixed=objs, tries=10)
            elif k == "recolor":
                color = str(rng.choice([c for c in COLOR_NAMES if c != objs[i].color]))
                objs[i] = objs[i].model_copy(update={"color": color})
            elif k == "reshape":
                shape = str(rng.choice([s for s in SHAPES if s != objs[i].shape]))
                objs[i] = objs[i].model_copy(update={"shape": shape})
            elif k == "move":
                rest = objs[:i] + objs[i + 1:]
                objs = rest + place(rng, [(objs[i].shape, objs[i].color)], fixed=rest, tries=10)
            elif k == "flip_relation":
                opposite = {"to the left of": "to the right of", "to the right of": "to the left of",
                            "above": "below", "below": "above"}[prompt.relation]
                objs = list(scene_for_prompt(prompt.model_copy(update={"relation": opposite}), rng).objects)
            candidate = Scene(objects=tuple(objs))
        except (PlacementError, ValueError):
            continue
        if not check_scene(prompt, candidate).ok:
            return candidate, k
    raise ValueError(f"no {kind or 'perturbation'} makes this scene wrong for {prompt.text!r}")
