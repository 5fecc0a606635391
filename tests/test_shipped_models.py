"""The weights shipped in the repo: they load from their default place with no path, run,
and are about as good as their report card says (a small sample, so a loose bound)."""

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
