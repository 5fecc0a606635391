"""Was an edit carried out? The edited image's objects against the source's, the named ones
changed as asked, every other one kept in place (`check_edit`); and the scene closest to what
was read off an image (`scene_from_parsed`), to apply an edit to a generated image."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from world.edits import Edit, EditError, parse_edit, select
from world.parse import ParsedObject
from world.scene import Obj, Scene
from world.spec import CANVAS, MAX_SIZE, MIN_SIZE
from world.verify import RELATION_TOLERANCE, as_parsed, holds

KEEP_TOLERANCE = 3.0  # pixels a kept object's centroid may drift


class EditCheck(BaseModel):
    ok: bool
    reason: str


def _failed(reason: str) -> EditCheck:
    return EditCheck(ok=False, reason=reason)


def _take(pool: list[ParsedObject], shape: str, color: str | None, near: tuple[float, float] | None) -> bool:
    """Remove from pool one object of that shape/colour (near a centroid, if given)."""
    for k, p in enumerate(pool):
        if p.shape == shape and (color is None or p.color == color) and (
                near is None or max(abs(p.centroid[0] - near[0]), abs(p.centroid[1] - near[1])) <= KEEP_TOLERANCE):
            del pool[k]
            return True
    return False


def check_edit(source: Scene | Sequence[ParsedObject], edit: Edit | str, result: Sequence[ParsedObject]) -> EditCheck:
    """Was `edit` carried out on `source` (a scene, or the objects read off the source image),
    judging the objects read off the edited image? Objects the edit does not name must stay
    (shape, colour, centroid within KEEP_TOLERANCE px); nothing else may appear."""
    edit = parse_edit(edit) if isinstance(edit, str) else edit
    pool = list(result)
    src = [as_parsed(o) for o in source.objects] if isinstance(source, Scene) else list(source)
    try:
        hits = [] if edit.action == "add" else select(src, edit.target)
    except EditError as e:
        return _failed(f"the edit does not apply to the source: {e}")
    if edit.action == "remove" and not edit.target.definite:
        hits = [i for i, o in enumerate(src) if edit.target.matches(o)]  # any `count` of these
        removable = len(hits) - edit.target.count
        kept_any = [i for i in hits if _take(pool, src[i].shape, src[i].color, src[i].centroid)]
        if len(kept_any) != removable:
            return _failed(f"expected {removable} of the matching objects to remain, found {len(kept_any)}")
    for i, o in enumerate(src):
        if i in hits:
            continue
        if not _take(pool, o.shape, o.color, o.centroid):
            return _failed(f"the {o.name} at ({o.centroid[0]:.0f}, {o.centroid[1]:.0f}) was not kept")
    if edit.action == "add":
        for _ in range(edit.target.count):
            if not _take(pool, edit.target.shape, edit.target.color, None):
                return _failed(f"{edit.target.text} was not added")
    elif edit.action == "recolor":
        for i in hits:
            if not _take(pool, src[i].shape, edit.new_color, src[i].centroid):
                return _failed(f"the {src[i].shape} was not made {edit.new_color} in place")
    elif edit.action == "move":
        refs = [src[i] for i in select(src, edit.reference)]
        for i in hits:
            moved = [p for p in pool if p.shape == src[i].shape and p.color == src[i].color]
            good = [p for p in moved if all(holds(edit.relation, p.centroid, r.centroid, RELATION_TOLERANCE)
                                            for r in refs)]
            if not good:
                return _failed(f"the {src[i].name} is not {edit.relation} {edit.reference.text}")
            pool.remove(good[0])
    if pool:
        names = ", ".join(p.name for p in pool)
        return _failed(f"unexpected objects after the edit: {names}")
    return EditCheck(ok=True, reason="the edit was carried out and everything else kept")


def scene_from_parsed(objects: Sequence[ParsedObject]) -> Scene | None:
    """A scene close to what was read off an image (to pick an edit for a generated image);
    None when the objects do not make a valid scene (too close, too small, too many)."""
    objs = []
    for o in objects:
        x0, y0, x1, y1 = o.box
        size = max(MIN_SIZE, min(MAX_SIZE, max(x1 - x0, y1 - y0)))
        x = min(max(0, round(o.centroid[0] - size / 2)), CANVAS - size)
        y = min(max(0, y1 - size), CANVAS - size)
        objs.append(Obj(shape=o.shape, color=o.color, x=x, y=y, size=size))
    try:
        return Scene(objects=tuple(objs))
    except ValueError:
        return None
