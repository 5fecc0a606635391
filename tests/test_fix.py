"""The fixing edit: the label of reflection data and what an ideal critic would say."""

import numpy as np
import pytest

from world import (
    EditError,
    Obj,
    Scene,
    apply_edit,
    check_image,
    check_scene,
    parse_image,
    parse_prompt,
    render_one,
    suite,
)
from world.fix import fixing_edit
from world.synth import perturb_scene, scene_for_prompt
from world.verify import as_parsed


def S(*objs):
    return Scene(objects=tuple(Obj(shape=s, color=c, x=x, y=y, size=12) for s, c, x, y in objs))


def objects(scene):
    return [as_parsed(o) for o in scene.objects]


@pytest.mark.parametrize("prompt,scene,edit", [
    ("a red circle", S(("circle", "green", 2, 2)), "make the green circle red"),
    ("a circle", S(("circle", "red", 2, 2), ("square", "blue", 40, 40)), "remove the blue square"),
    ("three red circles", S(("circle", "red", 2, 2)), "add two red circles"),
    ("three triangles", S(("triangle", "red", 2, 2), ("triangle", "blue", 40, 2)), "add a triangle"),
    ("a red circle and a circle", S(("circle", "blue", 2, 2), ("circle", "blue", 40, 2)), "remove a blue circle"),
    ("a circle above a square", S(("square", "blue", 2, 20), ("circle", "red", 40, 40)),
     "move the circle above the square"),
    ("a circle above a square", S(("square", "blue", 2, 2), ("circle", "red", 40, 40)),
     "move the square below the circle"),  # no room above the square: move it instead
    ("two circles", S(("circle", "blue", 2, 2), ("circle", "red", 40, 2), ("circle", "red", 2, 40)),
     "remove a red circle"),
])
def test_one_edit_per_defect(prompt, scene, edit):
    assert fixing_edit(prompt, objects(scene), tolerance=0.0).text == edit


def test_right_image_and_unreadable_image_get_no_edit():
    scene = S(("circle", "red", 2, 2))
    assert fixing_edit("a red circle", objects(scene)) is None
    image = render_one(scene)
    image[40:52, 40:52] = (128, 128, 128)  # grey: no palette colour
    parsed = parse_image(image)
    assert parsed.blobs and fixing_edit("a red circle", parsed.objects, check_image("a red circle", image)) is None


def test_ideal_editor_following_the_fixes_mends_near_misses():
    """Applying each fixing edit exactly: most near misses are mended, each edit makes progress."""
    rng = np.random.default_rng(0)
    mended, total = 0, 0
    for item in suite("dev", per_family=40):
        prompt = parse_prompt(item.prompt)
        try:
            scene, _ = perturb_scene(prompt, scene_for_prompt(prompt, rng), rng)
        except ValueError:
            continue
        total += 1
        for _ in range(3):
            edit = fixing_edit(prompt, objects(scene), tolerance=0.0)
            if edit is None:
                break
            try:
                scene = apply_edit(scene, edit, rng)
            except EditError:
                break
            if check_scene(prompt, scene).ok:
                mended += 1
                break
    assert total > 250 and mended / total >= 0.9, (mended, total)
