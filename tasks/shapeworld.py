"""The ShapeWorld task: the embedded world's prompt grammar, suites, exact verifier and edit
grammar, and the ideal reflection (`label_critique`) that trains the embedded critic.

The only module of the loop's path that imports world/; it loads when a run config names
`task: shapeworld` (the default).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.critique import REGENERATE, Critique
from policies.critique import parse_critique as parse_general
from tasks.base import SuitePrompt, Task, Verdict
from world import PromptError, check_image, parse_edit, parse_prompt, verify
from world import suite as world_suite
from world.fix import fixing_edit
from world.parse import Blob, ParsedObject
from world.spec import CANVAS, FAMILIES

CRITIC_TEMPLATE = """This image was generated for the prompt: "{prompt}".
Check the image against the prompt. Answer in exactly this format, one field a line:
seen: the objects you see, each with its colour and place, separated by ';'
wrong: what does not match the prompt, separated by ';' (or: nothing)
verdict: right or wrong
edit: ONE instruction that fixes the image (only when the verdict is wrong)
An edit is one of: add two yellow squares | remove the blue square | make the green triangle red | \
move the red circle below the blue square | regenerate (when no single edit can fix it).
Example:
seen: a red circle (top left); a blue square (bottom right)
wrong: the circle is not below the square (it is above it)
verdict: wrong
edit: move the red circle below the blue square"""


def check_instruction(instruction: str) -> str:
    """An edit in the world's grammar, lower case with single spaces; PromptError (a ValueError)
    names the word it cannot read."""
    instruction = " ".join(instruction.lower().split())
    parse_edit(instruction)
    return instruction


def parse_critique(text: str) -> Critique:
    """A reflection read as the ShapeWorld task reads it: the general format, then the edit grammar."""
    return parse_general(text, check=check_instruction)


class ShapeWorldTask(Task):
    name = "shapeworld"
    critic_template = CRITIC_TEMPLATE
    suites = ("dev", "train", "test")
    families = FAMILIES
    has_verifier = True

    def check_prompt(self, prompt: str) -> str:
        try:
            return parse_prompt(prompt).family
        except PromptError as e:
            raise ValueError(f"{e} (the shapeworld task reads only its grammar; for free text set `task: open` in "
                             "the run config)") from None

    def suite(self, name: str, per_family: int | None = None) -> list[SuitePrompt]:
        return [SuitePrompt(id=i.id, prompt=i.prompt, family=i.family, seed=i.seed)
                for i in world_suite(name, per_family)]

    def verify(self, prompt: str, image: np.ndarray) -> Verdict:
        v = check_image(prompt, image)
        return Verdict(ok=v.ok, reason=v.reason)

    def check_instruction(self, instruction: str) -> str:
        return check_instruction(instruction)


def where(obj: ParsedObject) -> str:
    """Coarse place on a 3x3 grid: 'top left', 'centre', 'bottom', ..."""
    return place(*obj.centroid)


def place(cx: float, cy: float) -> str:
    col = ("left", "", "right")[min(int(3 * cx / CANVAS), 2)]
    row = ("top", "", "bottom")[min(int(3 * cy / CANVAS), 2)]
    return " ".join(w for w in (row, col) if w) or "centre"


def label_critique(prompt: str, objects: Sequence[ParsedObject], blobs: Sequence[Blob] = ()) -> Critique:
    """The ideal reflection on an image whose objects are known (from the verifier): the
    training label of the critic. Never used at inference."""
    prompt = parse_prompt(prompt)
    verdict = verify(prompt, objects, blobs, tolerance=0.0 if not blobs and _exact(objects) else 1.0)
    noshapes = [no_shape(b) for b in blobs]
    seen = [f"a {o.color} {o.shape} ({where(o)})" for o in objects] + noshapes
    if verdict.ok:
        return Critique(verdict="right", observations=seen)
    edit = fixing_edit(prompt, objects, verdict)
    defects = [f"found {n}" for n in noshapes] + [d.message for d in verdict.defects if d.kind != "unreadable"]
    return Critique(verdict="wrong", observations=seen, defects=defects, instruction=edit.text if edit else REGENERATE)


def no_shape(blob: Blob) -> str:
    """A region that fits no shape, in a critic's words (a colour and a coarse place); the verifier's
    own message adds its pixel coordinates and measurements, more than a critic can be asked to say."""
    x0, y0, x1, y1 = blob.box
    what = "a region of unknown colour" if blob.color == "unknown" else f"a {blob.color} region"
    return f"{what} ({place((x0 + x1) / 2, (y0 + y1) / 2)}) that is no shape"


def _exact(objects: Sequence[ParsedObject]) -> bool:
    """Objects of a scene (area None) have exact centroids; objects read off pixels do not."""
    return all(o.area is None for o in objects)
