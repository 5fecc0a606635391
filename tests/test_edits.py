import numpy as np
import pytest

from world import EditError, Obj, Scene, apply_edit, check_edit, make_edit_pair, parse_edit, parse_image, render_one
from world.grammar import PromptError
from world.synth import random_scene
from world.verify import holds


def S(*objs):
    return Scene(objects=tuple(Obj(shape=s, color=c, x=x, y=y, size=12) for s, c, x, y in objs))


SCENE = S(("circle", "red", 2, 2), ("square", "blue", 40, 40), ("triangle", "green", 2, 40), ("circle", "red", 40, 2))


@pytest.mark.parametrize("text", [
    "add two yellow squares", "add a circle", "remove the blue square", "remove the red circles",
    "remove two red circles", "make the green triangle red", "make the circles purple",
    "move the red circle to the left of the blue square", "move the triangle above the blue square",
])
def test_edit_text_round_trip(text):
    assert parse_edit(text).text == text


@pytest.mark.parametrize("text,word", [
    ("paint the circle red", "'paint'"), ("make the circle", "ends too early"),
    ("move the circle beside the square", "'beside'"), ("make a circle red", "'a'"),
    ("add five circles", "'five'"), ("remove the blue square please", "'please'"),
])
def test_bad_edits_name_the_word(text, word):
    with pytest.raises(PromptError, match=word):
        parse_edit(text)


def test_apply_each_action():
    rng = np.random.default_rng(0)
    names = lambda s: sorted(o.name for o in s.objects)  # noqa: E731
    assert names(apply_edit(SCENE, "add two yellow squares", rng)).count("yellow square") == 2
    assert "blue square" not in names(apply_edit(SCENE, "remove the blue square", rng))
    assert names(apply_edit(SCENE, "remove the red circles", rng)) == ["blue square", "green triangle"]
    assert names(apply_edit(SCENE, "make the triangle red", rng)).count("red triangle") == 1
    moved = apply_edit(SCENE, "move the triangle above the blue square", rng)
    tri = next(o for o in moved.objects if o.shape == "triangle")
    square = next(o for o in moved.objects if o.shape == "square")
    assert holds("above", tri.centroid, square.centroid) and [o for o in moved.objects if o.shape != "triangle"] == [
        o for o in SCENE.objects if o.shape != "triangle"]


@pytest.mark.parametrize("text,message", [
    ("remove the red circle", "ambiguous"),
    ("make the purple square red", "no purple square"),
    ("remove three red circles", "only 2"),
    ("add three squares", "exceed 6"),
])
def test_edits_that_do_not_apply(text, message):
    with pytest.raises(EditError, match=message):
        apply_edit(SCENE, text, np.random.default_rng(0))


def test_edit_pairs_are_applied_and_checkable():
    rng = np.random.default_rng(3)
    actions = set()
    for _ in range(300):
        pair = make_edit_pair(rng, random_scene(rng))
        actions.add(pair.instruction.split()[0])
        done = check_edit(pair.source, pair.instruction, list(parse_image(render_one(pair.target)).objects))
        undone = check_edit(pair.source, pair.instruction, list(parse_image(render_one(pair.source)).objects))
        assert done.ok, (pair.instruction, done.reason)
        assert not undone.ok, pair.instruction  # every pair changes something
    assert actions == {"add", "remove", "make", "move"}


def test_check_edit_catches_collateral_damage():
    rng = np.random.default_rng(0)
    target = apply_edit(SCENE, "make the triangle red", rng)
    broken = apply_edit(target, "remove the blue square", rng)
    result = check_edit(SCENE, "make the triangle red", list(parse_image(render_one(broken)).objects))
    assert not result.ok and "blue square" in result.reason


def test_every_generated_instruction_parses_even_in_crowded_scenes():
    """Regression: five identical objects once made 'remove five purple circles', which the
    grammar (counts up to four) cannot read."""
    rng = np.random.default_rng(11)
    crowded = [Scene(objects=tuple(Obj(shape="circle", color="purple", x=2 + 20 * (i % 3), y=2 + 30 * (i // 3),
                                       size=12) for i in range(5)) + (Obj(shape="square", color="red", x=42, y=34,
                                                                          size=12),))]
    scenes = crowded * 200 + [random_scene(rng, 6) for _ in range(300)]
    for scene in scenes:
        for action in ("add", "remove", "recolor", "move"):
            try:
                pair = make_edit_pair(rng, scene, action)
            except EditError:
                continue
            assert parse_edit(pair.instruction).text == pair.instruction


def test_move_goes_to_the_nearest_place_the_relation_holds():
    """No place that keeps the scene valid and holds the relation (clear of the margin) is nearer the
    object's old place than where the move puts it; the rest stay put."""
    rng = np.random.default_rng(3)
    for _ in range(6):
        pair = make_edit_pair(rng, random_scene(rng), "move")
        edit = parse_edit(pair.instruction)
        old = next(o for o in pair.source.objects if edit.target.matches(o))
        new = next(o for o in pair.target.objects if edit.target.matches(o))
        ref = next(o for o in pair.source.objects if edit.reference.matches(o))
        rest = [o for o in pair.source.objects if o != old]
        assert sorted(rest, key=str) == sorted((o for o in pair.target.objects if o != new), key=str)
        chosen = abs(new.x - old.x) + abs(new.y - old.y)
        for x in range(64 - old.size + 1):
            for y in range(64 - old.size + 1):
                if abs(x - old.x) + abs(y - old.y) >= chosen:
                    continue
                moved = old.model_copy(update={"x": x, "y": y})
                if holds(edit.relation, moved.centroid, ref.centroid, 2.0):
                    with pytest.raises(ValueError):
                        Scene(objects=(*rest, moved))
