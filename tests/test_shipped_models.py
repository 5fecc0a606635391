"""The weights shipped in the repo: they load from their default place with no path, run,
and are about as good as their report card says (a small sample, so a loose bound)."""

from pathlib import Path

import pytest

from model.shapeworld.pipeline import DEFAULT_GENERATOR, load_generator
from world import check_image, suite

# The shipped generator is an interim CPU-trained model (README: 2 of these 16 right when
# measured); this bound catches a broken pipeline (blank or garbled images score 0).
MIN_EASY_ACCURACY = 1 / 16

pytestmark = pytest.mark.skipif(not (DEFAULT_GENERATOR / "model_index.json").is_file(),
                                reason="no shipped generator in this checkout")


@pytest.mark.slow
def test_shipped_generator_draws_easy_prompts():
    pipe = load_generator()  # no path: the shipped weights
    items = [i for i in suite("dev", per_family=8) if i.family in ("single_object", "colors")]
    images = pipe([i.prompt for i in items], seed=[i.seed for i in items]).images
    accuracy = sum(check_image(i.prompt, img).ok for i, img in zip(items, images)) / len(items)
    assert accuracy >= MIN_EASY_ACCURACY, accuracy


def test_shipped_generator_records_how_it_was_made():
    import json

    record = json.loads((DEFAULT_GENERATOR / "training.json").read_text())
    assert {"command", "config", "steps", "examples_seen", "wall_seconds"} <= record.keys()


# -- the shipped critic (model/critic/weights/critic) ----------------------------------------------

def critic_shipped() -> bool:
    from model.critic.backend import DEFAULT_CRITIC

    return (DEFAULT_CRITIC / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not critic_shipped(), reason="no shipped critic in this checkout")
def test_shipped_critic_reflects_on_rendered_scenes():
    """No path: the shipped critic. Loose bounds that catch a broken critic: garbled text never
    parses, and a critic that ignores the image says one verdict for right and wrong scenes alike."""
    import numpy as np

    from model.critic.backend import CriticBackendConfig, ShapeWorldCritic
    from policies.critique import CritiqueError
    from tasks.shapeworld import parse_critique
    from world import render_one, scene_for_prompt
    from world.synth import perturb_scene

    critic = ShapeWorldCritic(CriticBackendConfig())
    rng = np.random.default_rng(0)
    items = suite("dev", per_family=4)
    scenes = [scene_for_prompt(i.prompt, rng) for i in items]
    right = [render_one(s) for s in scenes]
    wrong = [render_one(perturb_scene(i.prompt, s, rng)[0]) for i, s in zip(items, scenes)]
    prompts = [i.prompt for i in items]
    said = {}
    for name, images in (("right", right), ("wrong", wrong)):
        verdicts = []
        for text in critic.critique(prompts, images):
            try:
                verdicts.append(parse_critique(text).verdict)
            except CritiqueError:
                verdicts.append(None)
        assert verdicts.count(None) <= 1, name
        said[name] = verdicts
    assert said["right"].count("right") >= 0.7 * len(items)
    assert said["wrong"].count("wrong") >= 0.15 * len(items)


@pytest.mark.skipif(not critic_shipped(), reason="no shipped critic in this checkout")
def test_shipped_critic_records_how_it_was_made():
    import json

    from model.critic.backend import DEFAULT_CRITIC

    record = json.loads((DEFAULT_CRITIC / "training.json").read_text())
    assert {"command", "config", "steps", "examples_seen", "wall_seconds", "git_commit"} <= record.keys()
    assert (DEFAULT_CRITIC / "eval_dev.json").is_file()  # its report card
    from model.critic.train_critic import CriticTrainConfig

    recipe = CriticTrainConfig.load(Path(__file__).parent.parent / "configs" / "critic.yaml")
    assert record["config"] == recipe.model_dump(mode="json"), "configs/critic.yaml is not the shipped critic's recipe"
