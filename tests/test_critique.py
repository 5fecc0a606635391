import pytest

from policies.critique import Critique, CritiqueError
from tasks.shapeworld import label_critique, parse_critique
from world import Obj, Scene, parse_image, render_one
from world.verify import as_parsed


def S(*objs):
    return Scene(objects=tuple(Obj(shape=s, color=c, x=x, y=y, size=12) for s, c, x, y in objs))


def test_label_round_trips_through_text():
    scene = S(("square", "blue", 2, 2), ("circle", "red", 40, 40))
    for prompt in ("a circle above a square", "a red circle and a blue square", "three circles"):
        label = label_critique(prompt, [as_parsed(o) for o in scene.objects])
        assert parse_critique(label.text) == label
    right = label_critique("a red circle and a blue square", [as_parsed(o) for o in scene.objects])
    assert right.verdict == "right" and right.instruction is None
    assert right.observations == ["a blue square (top left)", "a red circle (bottom right)"]
    wrong = label_critique("a circle above a square", [as_parsed(o) for o in scene.objects])
    assert wrong.verdict == "wrong" and wrong.instruction == "move the square below the circle"
    assert wrong.defects == ["the circle is not above the square (it is below it)"]


def test_label_from_pixels_and_unreadable_images():
    image = render_one(S(("triangle", "green", 20, 20)))
    parsed = parse_image(image)
    assert label_critique("three triangles", parsed.objects).instruction == "add two triangles"
    image[40:52, 40:52] = (0, 0, 0)
    parsed = parse_image(image)
    label = label_critique("a triangle", parsed.objects, parsed.blobs)
    assert label.verdict == "wrong" and label.instruction == "regenerate" and "unknown colour" in label.observations[-1]


def test_parser_is_lenient_about_layout_and_thinking():
    text = "Let me look.\nSEEN: a red circle (top)\nWrong: nothing.\nVerdict: Right\n"
    assert parse_critique(text) == Critique(verdict="right", observations=["a red circle (top)"])
    text = "seen: nothing\nwrong: expected a circle, found none\nverdict: wrong\nedit:  Add a  circle."
    assert parse_critique(text).instruction == "add a circle"


@pytest.mark.parametrize("text,message", [
    ("seen: a circle", "no 'verdict:'"),
    ("verdict: maybe", "'right' or 'wrong'"),
    ("verdict: wrong", "needs one edit"),
    ("verdict: right\nedit: add a circle", "needs no edit"),
    ("verdict: wrong\nedit: paint the circle", "'paint'"),
    ("verdict: wrong\nverdict: right", "twice"),
])
def test_bad_reflections_raise_critique_error(text, message):
    with pytest.raises(CritiqueError, match=message):
        parse_critique(text)
