"""The training examples of the unified model, streamed from world/ (never stored).

Each example is symbolic (scenes and texts); `sequences.py` renders, encodes and lays them out
as tokens. The world's renderer and verifier label training data here; no inference path of the
model touches them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.critique import REGENERATE
from tasks.shapeworld import label_critique
from world import Scene, apply_edit, check_scene, make_edit_pair, random_scene, render, scene_for_prompt
from world.edits import EditError
from world.spec import FAMILIES
from world.suites import sample_prompt
from world.synth import PlacementError, perturb_scene
from world.verify import as_parsed

TASKS = ("draw", "reflect", "revise", "edit")


@dataclass
class Example:
    task: str
    text: str  # the prompt (draw, reflect, revise) or the instruction (edit)
    target: Scene | None = None  # the image to draw (draw, revise, edit)
    source: Scene | None = None  # the image looked at (reflect, revise, edit)
    critique: str | None = None  # what the model writes (reflect) or the edit it follows (revise)


def train_prompt(rng: np.random.Generator) -> str:
    return sample_prompt(rng, FAMILIES[int(rng.integers(len(FAMILIES)))], "train").text


def training_scenes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rendered scenes for the tokenizer: half random (1-6 objects anywhere), half for prompts."""
    scenes = [random_scene(rng) if i % 2 else scene_for_prompt(train_prompt(rng), rng) for i in range(n)]
    return render(scenes)


def near_miss(prompt: str, rng: np.random.Generator) -> Scene:
    return perturb_scene(prompt, scene_for_prompt(prompt, rng), rng)[0]


def reading_order(objects):
    """Top to bottom in bands of one code row (8 px), then left to right: the order a reflection
    lists what it sees, so that the same image always gets the same words."""
    return sorted(objects, key=lambda o: (int(o.centroid[1]) // 8, o.centroid[0]))


def critique_of(prompt: str, scene: Scene) -> str:
    return label_critique(prompt, reading_order(as_parsed(o) for o in scene.objects)).text


def draw_example(rng: np.random.Generator) -> Example:
    prompt = train_prompt(rng)
    return Example("draw", prompt, target=scene_for_prompt(prompt, rng))


def reflect_example(rng: np.random.Generator) -> Example:
    """Half right scenes, half near misses: the verdict must not lean either way."""
    prompt = train_prompt(rng)
    scene = scene_for_prompt(prompt, rng) if rng.random() < 0.5 else near_miss(prompt, rng)
    return Example("reflect", prompt, source=scene, critique=critique_of(prompt, scene))


def revise_example(rng: np.random.Generator) -> Example:
    """A wrong scene, its ideal reflection, and the corrected scene that keeps what was right."""
    prompt = train_prompt(rng)
    for _ in range(20):
        wrong = near_miss(prompt, rng)
        critique = label_critique(prompt, reading_order(as_parsed(o) for o in wrong.objects))
        try:
            fixed = (scene_for_prompt(prompt, rng) if critique.instruction == REGENERATE
                     else apply_edit(wrong, critique.instruction, rng))
        except (EditError, PlacementError):
            continue
        if check_scene(prompt, fixed).ok:
            return Example("revise", prompt, target=fixed, source=wrong, critique=critique.instruction)
    raise ValueError(f"no repairable near miss for {prompt!r}")


def edit_example(rng: np.random.Generator) -> Example:
    source = random_scene(rng) if rng.random() < 0.5 else scene_for_prompt(train_prompt(rng), rng)
    pair = make_edit_pair(rng, source)
    return Example("edit", pair.instruction, target=pair.target, source=pair.source)


MAKERS = {"draw": draw_example, "reflect": reflect_example, "revise": revise_example, "edit": edit_example}


def make_examples(task: str, rng: np.random.Generator, n: int) -> list[Example]:
    out = []
    while len(out) < n:
        try:
            out.append(MAKERS[task](rng))
        except (ValueError, EditError, PlacementError):
            continue  # a draw that fits no layout: the next draw of the same stream
    return out
