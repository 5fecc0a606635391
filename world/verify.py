"""Verifier: does an image (or scene) hold exactly what a prompt names? If not, why, in words.

Defects are structured (kind, shape, colours, counts) so they serve as critique text, as
training labels, and as the source of a fixing edit; `Verdict.reason` joins their messages.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel

from world.grammar import Group, Prompt, describe, parse_prompt
from world.parse import Blob, ParsedObject, parse_image
from world.scene import Obj, Scene
from world.spec import RELATION_MARGIN, SHAPES

NUMBER_NAMES = ["none", "one", "two", "three", "four", "five", "six"]
RELATION_TOLERANCE = 1.0
OK_REASON = "the image shows exactly what the prompt asks for"


class Defect(BaseModel):
    kind: Literal["unreadable", "missing", "extra", "wrong_color", "relation"]
    message: str
    shape: str | None = None
    color: str | None = None  # the colour the prompt asks for (None: any)
    found_color: str | None = None  # wrong_color: the colour that is there instead
    expected: int | None = None
    found: int | None = None
    count: int = 1  # objects to add (missing) or remove (extra) to mend this defect


class Verdict(BaseModel):
    prompt: str
    family: str
    ok: bool
    objects: list[ParsedObject]
    defects: list[Defect]

    @property
    def reason(self) -> str:
        return "; ".join(d.message for d in self.defects) if self.defects else OK_REASON


def count_words(n: int) -> str:
    return NUMBER_NAMES[n] if n < len(NUMBER_NAMES) else str(n)


def _count_defects(prompt: Prompt, objects: Sequence[ParsedObject]) -> list[Defect]:
    """Per shape: coloured groups need their exact colours, uncoloured groups take any of the
    rest. A missing colour beside a spare object of the same shape is a wrong colour."""
    have = Counter((o.shape, o.color) for o in objects)
    defects: list[Defect] = []
    for shape in SHAPES:
        need = Counter()
        for g in prompt.groups:
            if g.shape == shape and g.color is not None:
                need[g.color] += g.count
        any_color = sum(g.count for g in prompt.groups if g.shape == shape and g.color is None)
        colors = sorted(c for (s, c) in have if s == shape)
        missing = {c: need[c] - have[shape, c] for c in sorted(need) if have[shape, c] < need[c]}
        spare = [c for c in colors for _ in range(have[shape, c] - need[c])]  # not taken by coloured groups
        free = len(spare) - any_color  # > 0: more than the uncoloured groups take
        for color in list(missing):
            while missing[color] and free > 0:  # a missing red circle beside a spare green circle
                other = _take_spare(spare, need)
                missing[color] -= 1
                free -= 1
                defects.append(Defect(
                    kind="wrong_color", shape=shape, color=color, found_color=other, expected=1, found=0, count=1,
                    message=f"expected {describe(1, color, shape)}, found {describe(1, other, shape)} instead"))
        for color, short in missing.items():
            if short:
                found = have[shape, color]
                defects.append(Defect(
                    kind="missing", shape=shape, color=color, expected=need[color], found=found, count=short,
                    message=f"expected {describe(need[color], color, shape)}, found {count_words(found)}"))
        if free == 0:
            continue
        if any_color:  # the uncoloured groups are short of, or offered too many, objects of this shape
            total_need = any_color + sum(need.values())
            total_found = sum(have[shape, c] for c in colors)
            defects.append(Defect(
                kind="missing" if free < 0 else "extra", shape=shape, expected=total_need, found=total_found,
                count=abs(free),
                message=f"expected {describe(total_need, None, shape)}, found {count_words(total_found)}"))
        else:
            for color, n in sorted(Counter(spare).items()):
                extra = "an extra" if n == 1 else f"{count_words(n)} extra"
                noun = f"{color} {shape}" + ("s" if n > 1 else "")
                defects.append(Defect(kind="extra", shape=shape, found_color=color, expected=0, found=n, count=n,
                                      message=f"found {extra} {noun}"))
    return defects


def _take_spare(spare: list[str], need: Counter) -> str:
    """The spare object to call mis-coloured: one of a colour the prompt does not ask for, if any."""
    for i, c in enumerate(spare):
        if c not in need:
            return spare.pop(i)
    return spare.pop(0)


def holds(relation: str, a: tuple[float, float], b: tuple[float, float], tolerance: float = 0.0) -> bool:
    """Does `a relation b` hold between two centroids (x right, y down), with the spec's margin
    (plus `tolerance`, for centroids measured off pixels)?"""
    (ax, ay), (bx, by) = a, b
    m = RELATION_MARGIN + tolerance
    return {
        "to the left of": ax < bx - m,
        "to the right of": ax > bx + m,
        "above": ay < by - m,
        "below": ay > by + m,
    }[relation]


def where_is(a: tuple[float, float], b: tuple[float, float], relation: str) -> str:
    """What is true instead, on the axis the relation is about."""
    horizontal = relation in ("to the left of", "to the right of")
    for rel in (("to the left of", "to the right of") if horizontal else ("above", "below")):
        if holds(rel, a, b):
            return f"only just {rel}" if rel == relation else rel
    return "level with"


def assign_groups(
    prompt: Prompt, objects: Sequence[ParsedObject], tolerance: float = 0.0
) -> tuple[int, list[ParsedObject], list[ParsedObject]] | None:
    """The assignment of objects to a relational prompt's two groups (respecting counts) that
    breaks the fewest pairs: (broken pairs, group A, group B); None if the counts cannot hold."""
    ga, gb = prompt.groups
    choices = [[k for k, g in enumerate(prompt.groups) if g.matches(o.shape, o.color)] for o in objects]
    best = None
    for assign in itertools.product(*choices):
        a = [o for o, k in zip(objects, assign) if k == 0]
        b = [o for o, k in zip(objects, assign) if k == 1]
        if len(a) != ga.count or len(b) != gb.count:
            continue
        broken = sum(not holds(prompt.relation, x.centroid, y.centroid, tolerance) for x in a for y in b)
        if best is None or broken < best[0]:
            best = (broken, a, b)
            if broken == 0:
                break
    return best


def _relation_defect(prompt: Prompt, objects: Sequence[ParsedObject], tolerance: float) -> Defect | None:
    ga, gb = prompt.groups
    best = assign_groups(prompt, objects, tolerance)
    if best is None:  # counts hold, so some assignment exists; be safe anyway
        return Defect(kind="relation", message=f"cannot tell which objects are {ga.text} and {gb.text}")
    broken, a, b = best
    if broken == 0:
        return None
    subject = _definite(ga)
    obj = _definite(gb)
    verb = "is" if ga.count == 1 else "are"
    every = "all " if ga.count + gb.count > 2 else ""
    message = f"{subject} {verb} not {every}{prompt.relation} {obj}"
    if ga.count == gb.count == 1:
        message += f" (it is {where_is(a[0].centroid, b[0].centroid, prompt.relation)} it)"
    return Defect(kind="relation", shape=ga.shape, color=ga.color, message=message)


def _definite(g: Group) -> str:
    return describe(g.count, g.color, g.shape, definite=True)


def verify(
    prompt: str | Prompt, objects: Sequence[ParsedObject], blobs: Sequence[Blob] = (), tolerance: float = 0.0
) -> Verdict:
    """Judge objects against a prompt. `tolerance`: pixels a relation must hold by beyond the
    margin, so that centroid measurement error never turns a wrong image right."""
    prompt = parse_prompt(prompt)
    defects = [Defect(kind="unreadable", found_color=b.color, message=f"found {b.description}") for b in blobs]
    defects += _count_defects(prompt, objects)
    if not defects and prompt.relation is not None:
        relation = _relation_defect(prompt, objects, tolerance)
        defects += [relation] if relation else []
    return Verdict(prompt=prompt.text, family=prompt.family, ok=not defects, objects=list(objects), defects=defects)


def check_image(prompt: str | Prompt, image: np.ndarray) -> Verdict:
    """Parse and judge an image. Relations must hold by RELATION_TOLERANCE px beyond the margin:
    centroids read off blurred, noisy pixels are off by up to ~0.6 px, and a verifier never guesses."""
    parsed = parse_image(image)
    return verify(prompt, parsed.objects, parsed.blobs, tolerance=RELATION_TOLERANCE)


def as_parsed(obj: Obj) -> ParsedObject:
    return ParsedObject(shape=obj.shape, color=obj.color, box=obj.box, centroid=obj.centroid, area=None)


def check_scene(prompt: str | Prompt, scene: Scene) -> Verdict:
    """Symbolic check of a scene (analytic centroids): for synthetic data, no pixels needed."""
    return verify(prompt, [as_parsed(o) for o in scene.objects])
