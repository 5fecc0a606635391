"""Edit instructions (what a critic may ask the editor to do), applied to scenes exactly.

    add NUM [color] shape(s)                       add two yellow squares
    remove the [color] shape(s) | NUM [color] shape(s)   remove the blue square
    make the [color] shape(s) COLOR                make the green triangle red
    move the [color] shape(s) RELATION the [color] shape(s)
                                                   move the red circle to the left of the blue square

`the X` (singular) must name exactly one object; `the Xs` names all of them. Objects not
named keep their shape, colour and place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from world.grammar import PromptError, _Reader, describe
from world.parse import ParsedObject
from world.scene import Obj, Scene
from world.spec import (
    CANVAS,
    COLOR_NAMES,
    MAX_COUNT,
    MAX_OBJECTS,
    MIN_GAP,
    RELATIONS,
    SHAPES,
    Color,
    Relation,
    Shape,
)
from world.synth import PlacementError, colors_for, place
from world.verify import RELATION_TOLERANCE, holds


class EditError(ValueError):
    """An edit that does not apply to this scene (names nothing, or is ambiguous)."""


class Selector(BaseModel):
    """Which objects an edit names. count None: every match (`the circles`); with `definite`,
    count 1 means the one and only match (`the circle`)."""

    model_config = ConfigDict(frozen=True)

    count: int | None = Field(default=1, ge=1, le=MAX_OBJECTS)
    color: Color | None = None
    shape: Shape
    definite: bool = True

    @property
    def text(self) -> str:
        if self.definite:
            return describe(1 if self.count == 1 else 2, self.color, self.shape, definite=True)
        return describe(self.count, self.color, self.shape)

    def matches(self, obj: Obj) -> bool:
        return obj.shape == self.shape and (self.color is None or obj.color == self.color)


class Edit(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Literal["add", "remove", "recolor", "move"]
    target: Selector
    new_color: Color | None = None  # recolor
    relation: Relation | None = None  # move
    reference: Selector | None = None  # move

    @property
    def text(self) -> str:
        if self.action == "add":
            return f"add {self.target.text}"
        if self.action == "remove":
            return f"remove {self.target.text}"
        if self.action == "recolor":
            return f"make {self.target.text} {self.new_color}"
        return f"move {self.target.text} {self.relation} {self.reference.text}"


def parse_edit(text: str) -> Edit:
    """Read an edit instruction; raises PromptError naming the word it could not read."""
    r = _Reader(text)
    verb = r.peek()
    if verb is None:
        raise PromptError("the edit instruction is empty")
    r.i += 1
    if verb == "add":
        g = r.group()
        edit = Edit(action="add", target=Selector(count=g.count, color=g.color, shape=g.shape, definite=False))
    elif verb == "remove":
        edit = Edit(action="remove", target=_selector(r))
    elif verb == "make":
        target = _selector(r, definite_only=True)
        color = r.color()
        if color is None:
            raise r.fail("the new colour (" + ", ".join(COLOR_NAMES) + ")")
        edit = Edit(action="recolor", target=target, new_color=color)
    elif verb == "move":
        target = _selector(r, definite_only=True)
        relation = r.relation()
        if relation is None:
            raise r.fail("a relation (" + ", ".join(RELATIONS) + ")")
        edit = Edit(action="move", target=target, relation=relation, reference=_selector(r, definite_only=True))
    else:
        r.i -= 1
        raise r.fail("an edit verb (add, remove, make, move)")
    r.end()
    return edit


def _selector(r: _Reader, definite_only: bool = False) -> Selector:
    if definite_only and r.peek() != "the":
        raise r.fail("'the' and the objects to change")
    definite = r.peek() == "the"
    count, color, shape = r.selector()
    return Selector(count=count, color=color, shape=shape, definite=definite)


def select(scene: Scene | Sequence[ParsedObject], sel: Selector) -> list[int]:
    """Indices of the objects a selector names; EditError when it names none or is ambiguous."""
    objects = scene.objects if isinstance(scene, Scene) else scene
    hits = [i for i, o in enumerate(objects) if sel.matches(o)]
    if not hits:
        raise EditError(f"there is no {' '.join(filter(None, [sel.color, sel.shape]))} to edit")
    if sel.definite and sel.count == 1 and len(hits) > 1:
        raise EditError(f"{sel.text!r} is ambiguous: the image holds {len(hits)} of them")
    if not sel.definite:
        if len(hits) < sel.count:
            raise EditError(f"asked for {sel.text}, but there are only {len(hits)}")
        hits = hits[-sel.count:]
    return hits


def apply_edit(scene: Scene, edit: Edit | str, rng: np.random.Generator) -> Scene:
    """The scene after the edit; other objects stay exactly as they were."""
    edit = parse_edit(edit) if isinstance(edit, str) else edit
    objs = list(scene.objects)
    if edit.action == "add":
        if len(objs) + edit.target.count > MAX_OBJECTS:
            raise EditError(f"adding {edit.target.count} would exceed {MAX_OBJECTS} objects")
        specs = [(edit.target.shape, c) for c in colors_for(rng, edit.target.color, edit.target.count)]
        try:
            return Scene(objects=tuple(objs + place(rng, specs, fixed=objs, tries=30)))
        except PlacementError:
            raise EditError(f"no room to {edit.text}") from None
    hits = select(scene, edit.target)
    if edit.action == "remove":
        if len(hits) == len(objs):
            raise EditError("removing every object would leave an empty scene")
        return Scene(objects=tuple(o for i, o in enumerate(objs) if i not in hits))
    if edit.action == "recolor":
        for i in hits:
            objs[i] = objs[i].model_copy(update={"color": edit.new_color})
        return Scene(objects=tuple(objs))
    refs = select(scene, edit.reference)
    if set(refs) & set(hits):
        raise EditError("an object cannot be moved relative to itself")
    return _move(scene, hits, refs, edit.relation, rng)


def _move(scene: Scene, hits: list[int], refs: list[int], relation: str, rng: np.random.Generator) -> Scene:
    """Re-place the named objects (same shape, colour, size) where the relation holds against every
    reference object, each as near its old place as the scene allows (ties at random); the rest stay
    put. The nearest place makes the target a function of the source and the instruction: a random one
    (as before) left a model nothing to learn but where objects may go, and it kept them in place."""
    placed = [o for i, o in enumerate(scene.objects) if i not in hits]
    ref_objs = [scene.objects[i] for i in refs]
    for i in hits:
        o = scene.objects[i]
        spots = _spots(o, placed, ref_objs, relation)
        if len(spots) == 0:
            raise EditError(f"no room to move {len(hits)} object(s) {relation} the reference")
        dist = np.abs(spots - [o.x, o.y]).sum(axis=1)
        near = spots[dist == dist.min()]
        x, y = near[int(rng.integers(len(near)))]
        placed.append(o.model_copy(update={"x": int(x), "y": int(y)}))
    return Scene(objects=tuple(placed))


def _spots(o: Obj, placed: list[Obj], ref_objs: list[Obj], relation: str) -> np.ndarray:
    """Every top-left corner (x, y) where `o` fits beside `placed` and the relation holds clear of the
    margin (so that the target reads unambiguously off pixels too)."""
    xs, ys = np.meshgrid(np.arange(CANVAS - o.size + 1), np.arange(CANVAS - o.size + 1), indexing="xy")
    xs, ys = xs.ravel(), ys.ravel()
    ok = np.ones(len(xs), dtype=bool)
    for p in placed:  # boxes at least MIN_GAP apart on some axis
        ok &= ((xs + o.size + MIN_GAP <= p.x) | (p.x + p.size + MIN_GAP <= xs)
               | (ys + o.size + MIN_GAP <= p.y) | (p.y + p.size + MIN_GAP <= ys))
    dx, dy = o.centroid[0] - o.x, o.centroid[1] - o.y
    for r in ref_objs:
        ok &= holds(relation, (xs + dx, ys + dy), r.centroid, 2 * RELATION_TOLERANCE)  # elementwise
    return np.stack([xs[ok], ys[ok]], axis=1)


class EditPair(BaseModel):
    source: Scene
    instruction: str
    target: Scene


def _name_unique(scene: Scene, i: int) -> Selector:
    """The shortest definite description that names object i alone (None if none does)."""
    o = scene.objects[i]
    for color in (None, o.color):
        sel = Selector(count=1, color=color, shape=o.shape)
        if sum(sel.matches(p) for p in scene.objects) == 1:
            return sel
    return None


def make_edit_pair(rng: np.random.Generator, source: Scene, action: str | None = None) -> EditPair:
    """A random applicable edit of `source` (any action, or the one asked for)."""
    for _ in range(100):
        kind = action or str(rng.choice(["add", "remove", "recolor", "move"]))
        try:
            edit = _random_edit(rng, source, kind)
            if edit is None:
                continue
            return EditPair(source=source, instruction=edit.text, target=apply_edit(source, edit, rng))
        except EditError:
            continue
    raise EditError(f"no {action or 'edit'} applies to this scene")


def _random_edit(rng: np.random.Generator, scene: Scene, kind: str) -> Edit | None:
    objs = scene.objects
    if kind == "add":
        room = MAX_OBJECTS - len(objs)
        if room < 1:
            return None
        n = int(rng.integers(1, min(room, 2) + 1))
        target = Selector(count=n, color=str(rng.choice(COLOR_NAMES)), shape=str(rng.choice(SHAPES)), definite=False)
        return Edit(action="add", target=target)
    i = int(rng.integers(len(objs)))
    sel = _name_unique(scene, i)
    if kind == "remove":
        if len(objs) < 2:
            return None
        same = [p for p in objs if p.shape == objs[i].shape and p.color == objs[i].color]
        if len(same) > 1 and len(same) < len(objs) and rng.random() < 0.5:  # all of them, or a count
            color, shape = objs[i].color, objs[i].shape
            if rng.random() < 0.5:
                return Edit(action="remove", target=Selector(count=None, color=color, shape=shape))
            # same draw as ever, clamped: counts stop at four (a draw of five or six used to fail)
            n = min(int(rng.integers(1, len(same) + 1)), MAX_COUNT) if len(same) < len(objs) else 1
            return Edit(action="remove", target=Selector(count=n, color=color, shape=shape, definite=False))
        return Edit(action="remove", target=sel) if sel else None
    if sel is None:
        return None
    if kind == "recolor":
        new = str(rng.choice([c for c in COLOR_NAMES if c != objs[i].color]))
        return Edit(action="recolor", target=sel, new_color=new)
    others = [j for j in range(len(objs)) if j != i and _name_unique(scene, j) is not None]
    if not others:
        return None
    j = others[int(rng.integers(len(others)))]
    relation = str(rng.choice(RELATIONS))
    if holds(relation, objs[i].centroid, objs[j].centroid):
        return None  # already true: an edit pair must change something
    return Edit(action="move", target=sel, relation=relation, reference=_name_unique(scene, j))
