"""Prompt families, held-out compositions, and the fixed train / dev / test suites.

Small families have few distinct prompts (single_object has three), so suites repeat
prompts under different seeds; what generalisation is measured on is HELD_OUT: complex
compositions (a coloured shape in one relation) that train never contains, while each
colour, shape and relation on its own is seen in train.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from world.grammar import Group, Prompt, parse_prompt
from world.spec import COLOR_NAMES, FAMILIES, MAX_COUNT, MAX_OBJECTS, RELATIONS, SHAPES

# (colour, shape, relation): a prompt whose first group is that colour and shape, in that
# relation to anything, is held out of train.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset({
    ("purple", "triangle", "above"),
    ("orange", "square", "to the left of"),
    ("green", "circle", "below"),
    ("yellow", "triangle", "to the right of"),
    ("blue", "square", "below"),
})
SPLIT_SEEDS = {"train": 1_000, "dev": 2_000, "test": 3_000}
SUITE_SIZE = {"train": 1000, "dev": 100, "test": 100}  # prompts per family
HELD_OUT_SHARE = 0.3  # of complex prompts in dev and test


class SuiteItem(BaseModel):
    id: str
    prompt: str
    family: str
    seed: int
    held_out: bool = False


def is_held_out(prompt: Prompt) -> bool:
    g = prompt.groups[0]
    return prompt.relation is not None and (g.color, g.shape, prompt.relation) in HELD_OUT


def _pick(rng: np.random.Generator, options) -> str:
    return str(options[int(rng.integers(len(options)))])


def _two_shapes(rng: np.random.Generator) -> tuple[str, str]:
    a, b = rng.choice(len(SHAPES), size=2, replace=False)
    return SHAPES[a], SHAPES[b]


def _draw(rng: np.random.Generator, family: str) -> Prompt:
    if family == "single_object":
        return Prompt(groups=(Group(count=1, shape=_pick(rng, SHAPES)),))
    if family == "colors":
        return Prompt(groups=(Group(count=1, color=_pick(rng, COLOR_NAMES), shape=_pick(rng, SHAPES)),))
    if family == "counting":
        return Prompt(groups=(Group(count=int(rng.integers(2, MAX_COUNT + 1)), shape=_pick(rng, SHAPES)),))
    if family in ("two_object", "position"):
        a, b = _two_shapes(rng)
        relation = _pick(rng, RELATIONS) if family == "position" else None
        return Prompt(groups=(Group(count=1, shape=a), Group(count=1, shape=b)), relation=relation)
    if family == "color_attr":
        a, b = _two_shapes(rng)
        ca, cb = (COLOR_NAMES[i] for i in rng.choice(len(COLOR_NAMES), size=2, replace=False))
        return Prompt(groups=(Group(count=1, color=ca, shape=a), Group(count=1, color=cb, shape=b)))
    if family == "complex":  # counts, colours and one relation
        na = int(rng.integers(1, MAX_COUNT + 1))
        nb = int(rng.integers(1, min(MAX_COUNT, MAX_OBJECTS - na) + 1))
        groups = tuple(
            Group(count=n, color=_pick(rng, COLOR_NAMES) if rng.random() < 0.8 else None, shape=_pick(rng, SHAPES))
            for n in (na, nb))
        return Prompt(groups=groups, relation=_pick(rng, RELATIONS))
    raise ValueError(f"unknown family {family!r}; families are {', '.join(FAMILIES)}")


def sample_prompt(rng: np.random.Generator, family: str, split: str = "train", held_out: bool | None = None) -> Prompt:
    """A random prompt of `family`. Train never yields a held-out composition; `held_out`
    True/False forces one side (True only makes sense for complex)."""
    want = False if split == "train" else held_out
    for _ in range(10_000):
        prompt = _draw(rng, family)
        if prompt.family != family or prompt.groups[0] == prompt.groups[-1] and len(prompt.groups) > 1:
            continue
        if want is None or is_held_out(prompt) == want:
            return prompt
    raise RuntimeError(f"could not draw a {family} prompt with held_out={want}")


def held_out_prompt(rng: np.random.Generator) -> Prompt:
    """A complex prompt built on a held-out composition."""
    color, shape, relation = sorted(HELD_OUT)[int(rng.integers(len(HELD_OUT)))]
    na = int(rng.integers(1, MAX_COUNT + 1))
    nb = int(rng.integers(1, min(MAX_COUNT, MAX_OBJECTS - na) + 1))
    other = Group(count=nb, color=_pick(rng, COLOR_NAMES), shape=_pick(rng, SHAPES))
    prompt = Prompt(groups=(Group(count=na, color=color, shape=shape), other), relation=relation)
    return prompt if prompt.groups[0] != other else held_out_prompt(rng)


def suite(split: str, per_family: int | None = None, families: tuple[str, ...] = FAMILIES) -> list[SuiteItem]:
    """The fixed prompt suite of a split: same seed, same prompts, on every machine."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLIT_SEEDS)}")
    n = per_family or SUITE_SIZE[split]
    items = []
    for family in families:
        rng = np.random.default_rng([SPLIT_SEEDS[split], FAMILIES.index(family)])
        n_held = int(round(n * HELD_OUT_SHARE)) if family == "complex" and split != "train" else 0
        for i in range(n):
            prompt = held_out_prompt(rng) if i < n_held else sample_prompt(rng, family, split, held_out=False)
            items.append(SuiteItem(
                id=f"{split}-{family}-{i:04d}", prompt=prompt.text, family=family,
                seed=int(rng.integers(2**31)), held_out=is_held_out(prompt)))
    return items


def load_prompt(text: str) -> Prompt:
    return parse_prompt(text)
