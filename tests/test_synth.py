import numpy as np
import pytest

from world import check_image, check_scene, is_held_out, parse_prompt, render, sample_prompt, suite
from world.spec import FAMILIES
from world.synth import scene_for_prompt


def test_suites_are_fixed_and_cover_every_family():
    dev = suite("dev")
    assert dev == suite("dev")  # same seed, same prompts
    for split in ("dev", "test"):
        items = suite(split)
        for family in FAMILIES:
            mine = [i for i in items if i.family == family]
            assert len(mine) >= 100
            assert all(parse_prompt(i.prompt).family == family for i in mine)
    assert len({i.id for i in dev}) == len(dev)
    assert [i.prompt for i in suite("dev")] != [i.prompt for i in suite("test")]


def test_held_out_compositions_never_reach_train():
    train = suite("train")
    assert not any(i.held_out for i in train)
    assert not any(is_held_out(parse_prompt(i.prompt)) for i in train)
    rng = np.random.default_rng(0)
    assert not any(is_held_out(sample_prompt(rng, "complex", "train")) for _ in range(2000))
    for split in ("dev", "test"):
        held = [i for i in suite(split) if i.held_out]
        assert len(held) >= 25 and all(i.family == "complex" for i in held)
        assert not {i.prompt for i in held} & {i.prompt for i in train}


def test_held_out_compositions_are_made_of_parts_train_has_seen():
    train = [parse_prompt(i.prompt) for i in suite("train")]
    seen = {(g.color, g.shape) for p in train for g in p.groups} | {p.relation for p in train}
    for item in suite("dev"):
        if item.held_out:
            p = parse_prompt(item.prompt)
            assert (p.groups[0].color, p.groups[0].shape) in seen and p.relation in seen


@pytest.mark.parametrize("split", ["dev", "test"])
def test_scene_for_every_suite_prompt_is_correct(split):
    rng = np.random.default_rng(0)
    items = suite(split)
    prompts = [parse_prompt(i.prompt) for i in items]
    scenes = [scene_for_prompt(p, rng) for p in prompts]
    assert all(check_scene(p, s).ok for p, s in zip(prompts, scenes))
    images = render(scenes)
    assert all(check_image(p, img).ok for p, img in zip(prompts, images))


def test_crowded_prompts_always_fit():
    rng = np.random.default_rng(1)
    for text in ["four circles above two squares", "two triangles to the left of four squares",
                 "three red circles below three blue triangles", "four squares and two circles"]:
        for _ in range(30):
            assert check_scene(text, scene_for_prompt(text, rng)).ok


def test_unknown_family_and_split():
    with pytest.raises(ValueError, match="unknown family"):
        sample_prompt(np.random.default_rng(0), "nonsense")
    with pytest.raises(ValueError, match="unknown split"):
        suite("validation")
