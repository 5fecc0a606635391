"""ShapeWorld: the embedded 64x64 world of coloured shapes (see specs/shapeworld.md).

Pure numpy; imports nothing else of refloop. Renderer and parser are for data, rewards and
evaluation only: no model's inference path may call them.
"""

from world.edit_check import check_edit
from world.edits import Edit, EditError, EditPair, apply_edit, make_edit_pair, parse_edit
from world.grammar import Group, Prompt, PromptError, parse_prompt
from world.parse import ParsedImage, ParsedObject, parse_image
from world.render import render, render_one
from world.scene import Obj, Scene
from world.suites import HELD_OUT, SuiteItem, is_held_out, sample_prompt, suite
from world.synth import random_scene, scene_for_prompt
from world.verify import Defect, Verdict, check_image, check_scene, verify

__all__ = [
    "Defect", "Edit", "EditError", "EditPair", "Group", "HELD_OUT", "Obj", "ParsedImage", "ParsedObject",
    "Prompt", "PromptError", "Scene", "SuiteItem", "Verdict", "apply_edit", "check_edit", "check_image",
    "check_scene", "is_held_out", "make_edit_pair", "parse_edit", "parse_image", "parse_prompt",
    "random_scene", "render", "render_one", "sample_prompt", "scene_for_prompt", "suite", "verify",
]
