"""The edit that fixes an image: from a verdict's first defect to ONE instruction in the
edit grammar. This is how reflection data is labelled (what is wrong, which edit fixes it)
and what an ideal critic would say; it reads objects, so it is never a model's inference.

Order: recolour, add, remove, move (but remove first when the canvas is full, see _priority).
An unreadable region has no name in the edit grammar, and two groups pinned against opposite
edges cannot be swapped by one move: then no edit fixes it (regenerate).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from world.edits import Edit, EditError, Selector, select
from world.grammar import Prompt, parse_prompt
from world.parse import ParsedObject
from world.spec import CANVAS, MAX_OBJECTS, RELATION_MARGIN
from world.verify import RELATION_TOLERANCE, Defect, Verdict, assign_groups, verify


def _priority(defect: Defect, n_objects: int) -> int:
    """Recolour first; add while there is room (a scene holds 6), remove unless it would empty
    the scene; move last, once the right objects are there."""
    if defect.kind == "wrong_color":
        return 0
    if defect.kind == "missing":
        return 1 if n_objects + defect.count <= MAX_OBJECTS else 3
    if defect.kind == "extra":
        return 2 if defect.count < n_objects else 4
    return 5


def fixing_edit(prompt: str | Prompt, objects: Sequence[ParsedObject], verdict: Verdict | None = None,
                tolerance: float = RELATION_TOLERANCE) -> Edit | None:
    """One edit that removes a defect of `objects` against `prompt`; None when the image is
    right, or when nothing the edit grammar can say would help."""
    prompt = parse_prompt(prompt)
    verdict = verdict or verify(prompt, objects, tolerance=tolerance)
    if verdict.ok or any(d.kind == "unreadable" for d in verdict.defects):
        return None
    for defect in sorted(verdict.defects, key=lambda d: _priority(d, len(objects))):
        edit = _edit_for(defect, prompt, list(objects), tolerance)
        if edit is not None:
            return edit
    return None


def _names_exactly(objects: list[ParsedObject], sel: Selector, wanted: list[ParsedObject]) -> bool:
    try:
        return sorted(select(objects, sel)) == sorted(objects.index(o) for o in wanted)
    except EditError:
        return False


def _definite_selector(objects: list[ParsedObject], wanted: list[ParsedObject]) -> Selector | None:
    """`the red circle`, `the circles`, ...: a description naming exactly `wanted`."""
    shape = wanted[0].shape
    colors = {o.color for o in wanted}
    count = 1 if len(wanted) == 1 else None
    for color in ([None] + sorted(colors) if len(colors) == 1 else [None]):
        sel = Selector(count=count, color=color, shape=shape)
        if _names_exactly(objects, sel, wanted):
            return sel
    return None


def _surplus_color(prompt: Prompt, objects: list[ParsedObject], shape: str) -> str | None:
    """The colour of `shape` that the prompt's coloured groups need least of (most in surplus)."""
    need = Counter()
    for g in prompt.groups:
        if g.shape == shape and g.color:
            need[g.color] += g.count
    have = Counter(o.color for o in objects if o.shape == shape)
    surplus = {c: n - need[c] for c, n in have.items() if n > need[c]}
    return max(sorted(surplus), key=surplus.get) if surplus else None


def _edit_for(defect: Defect, prompt: Prompt, objects: list[ParsedObject], tolerance: float) -> Edit | None:
    shape = defect.shape
    if defect.kind == "wrong_color":
        wrong = [o for o in objects if o.shape == shape and o.color == defect.found_color]
        if len(wrong) == 1:
            return Edit(action="recolor", target=Selector(count=1, color=defect.found_color, shape=shape),
                        new_color=defect.color)
        return Edit(action="remove", target=Selector(count=1, color=defect.found_color, shape=shape, definite=False))
    if defect.kind == "extra":
        n = defect.count
        color = defect.found_color or _surplus_color(prompt, objects, shape)
        matching = [o for o in objects if o.shape == shape and (color is None or o.color == color)]
        if n == len(matching):
            return Edit(action="remove", target=Selector(count=1 if n == 1 else None, color=color, shape=shape))
        return Edit(action="remove", target=Selector(count=min(n, 4), color=color, shape=shape, definite=False))
    if defect.kind == "missing":
        n = min(defect.count, 4)
        return Edit(action="add", target=Selector(count=n, color=defect.color, shape=shape, definite=False))
    if defect.kind == "relation":
        best = assign_groups(prompt, objects, tolerance)
        if best is None:
            return None
        _, a, b = best
        relation = prompt.relation
        forward, backward = _slack(relation, a, b), _slack(INVERSE[relation], b, a)
        if max(forward, backward) < 0:
            return None  # pinned against opposite edges: no one move can do it
        if backward > forward:
            a, b, relation = b, a, INVERSE[relation]  # more room to move B the other way
        target, reference = _definite_selector(objects, a), _definite_selector(objects, b)
        if target is None or reference is None:
            return None
        return Edit(action="move", target=target, relation=relation, reference=reference)
    return None


INVERSE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}


def _slack(relation: str, movers: list[ParsedObject], refs: list[ParsedObject]) -> float:
    """Pixels to spare when moving `movers` to `relation` of `refs`: the space between the refs'
    outermost centroid and the canvas edge, less what the largest mover needs (margin, read
    tolerance, half its size)."""
    if relation == "to the left of":
        room = min(o.centroid[0] for o in refs)
    elif relation == "to the right of":
        room = CANVAS - max(o.centroid[0] for o in refs)
    elif relation == "above":
        room = min(o.centroid[1] for o in refs)
    else:
        room = CANVAS - max(o.centroid[1] for o in refs)
    half = max(max(o.box[2] - o.box[0], o.box[3] - o.box[1]) for o in movers) / 2
    return room - RELATION_MARGIN - 2 * RELATION_TOLERANCE - half


def describe_fix(edit: Edit | None) -> str:
    return edit.text if edit is not None else "regenerate"

