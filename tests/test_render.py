import numpy as np
import pytest
from pydantic import ValidationError

from world import Obj, Scene, random_scene, render, render_one
from world.spec import CANVAS, COLORS


def one(shape, color="red", x=10, y=10, size=16):
    return Scene(objects=(Obj(shape=shape, color=color, x=x, y=y, size=size),))


def test_canvas_background_and_exact_colours():
    img = render_one(one("square", "purple", x=5, y=7, size=12))
    assert img.shape == (CANVAS, CANVAS, 3) and img.dtype == np.uint8
    assert (img[7:19, 5:17] == COLORS["purple"]).all()
    mask = np.ones((CANVAS, CANVAS), bool)
    mask[7:19, 5:17] = False
    assert (img[mask] == 255).all()


@pytest.mark.parametrize("size", [12, 15, 20])
def test_shape_areas_match_geometry(size):
    areas = {s: int((render_one(one(s, size=size)) != 255).any(-1).sum()) for s in ("circle", "square", "triangle")}
    assert areas["square"] == size * size
    assert abs(areas["circle"] / size**2 - np.pi / 4) < 0.05
    assert abs(areas["triangle"] / size**2 - 0.5) < 0.06


def test_triangle_apex_up_base_down():
    img = render_one(one("triangle", size=20))
    rows = (img != 255).any(-1).sum(1)
    filled = rows[rows > 0]
    assert filled[0] < 4 and filled[-1] >= 18 and (np.diff(filled) >= 0).all()


def test_scene_rejects_overlap_and_leaving_canvas():
    a = Obj(shape="circle", color="red", x=0, y=0, size=12)
    with pytest.raises(ValidationError, match="closer than"):
        Scene(objects=(a, Obj(shape="square", color="blue", x=13, y=0, size=12)))
    Scene(objects=(a, Obj(shape="square", color="blue", x=14, y=0, size=12)))  # a 2-pixel gap is fine
    with pytest.raises(ValidationError, match="leaves"):
        Scene(objects=(Obj(shape="circle", color="red", x=50, y=0, size=16),))
    with pytest.raises(ValidationError):
        Obj(shape="circle", color="red", x=0, y=0, size=21)
    with pytest.raises(ValidationError):
        Scene(objects=())


def test_batch_render_equals_one_by_one(rng):
    scenes = [random_scene(rng) for _ in range(50)]
    batch = render(scenes)
    for scene, img in zip(scenes, batch):
        assert (render_one(scene) == img).all()
    # every object's pixels are its colour, at its place
    for scene, img in zip(scenes, batch):
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            patch = img[y0:y1, x0:x1]
            assert ((patch == COLORS[o.color]).all(-1) | (patch == 255).all(-1)).all()
