"""What real VLM critics write, read into the general critique (verdict, observations, defects, one
instruction): the line format, markdown bullets and bold keys, headings, JSON (bare or fenced), any
case, chatter around the fields, synonyms. Each output has its expected parse or expected error."""

from __future__ import annotations

import pytest

from policies.critique import REGENERATE, Critique, CritiqueError, parse_critique
from tasks.shapeworld import ShapeWorldTask, label_critique
from world import Obj, Scene, parse_image, render_one
from world.verify import as_parsed


def C(verdict, seen=(), wrong=(), edit=None):
    return Critique(verdict=verdict, observations=list(seen), defects=list(wrong), instruction=edit)


READABLE = {
    "line format (the embedded model's)": (
        "seen: a red circle (top left); a blue square (bottom right)\n"
        "wrong: the circle is not below the square (it is above it)\nverdict: wrong\n"
        "edit: move the circle below the square",
        C("wrong", ["a red circle (top left)", "a blue square (bottom right)"],
          ["the circle is not below the square (it is above it)"], "move the circle below the square")),
    "line format, capitals and chatter around": (
        "Sure, let me look at the image carefully.\n\nSEEN: a cat; a blue hat\nWRONG: the hat is blue, not red\n"
        "VERDICT: WRONG\nEDIT: Make the hat red.\n\nI hope this helps!",
        C("wrong", ["a cat", "a blue hat"], ["the hat is blue, not red"], "Make the hat red")),
    "markdown bullets with bold keys": (
        "Here is my critique:\n\n- **Observations:** a grey cat; a blue hat on its head\n"
        "- **Defects:** the hat is blue instead of red\n- **Verdict:** Incorrect\n"
        "- **Instruction:** Change the hat's colour to red.",
        C("wrong", ["a grey cat", "a blue hat on its head"], ["the hat is blue instead of red"],
          "Change the hat's colour to red")),
    "bold keys, colon outside the bold": (
        "**Observations**: a cat riding a skateboard in a park\n**Issues**: none\n**Verdict**: Correct",
        C("right", ["a cat riding a skateboard in a park"])),
    "headings with lists and a bold value": (
        "## Observations\n- A cat sitting on a wooden floor\n- A skateboard next to the cat\n\n"
        "## Issues\n- The cat is not riding the skateboard\n\n## Verdict\n**Incorrect**\n\n"
        "## Fix\nPlace the cat on top of the skateboard.",
        C("wrong", ["A cat sitting on a wooden floor", "A skateboard next to the cat"],
          ["The cat is not riding the skateboard"], "Place the cat on top of the skateboard")),
    "bare JSON": (
        '{"verdict": "wrong", "observations": ["a dog", "a red hat"], "defects": ["a dog, not a cat"], '
        '"instruction": "replace the dog with a cat"}',
        C("wrong", ["a dog", "a red hat"], ["a dog, not a cat"], "replace the dog with a cat")),
    "JSON in a ```json fence with chatter": (
        "I analysed the image. Here is the result:\n```json\n{\n  \"verdict\": \"Incorrect\",\n"
        "  \"observations\": \"three apples; a wooden table\",\n  \"issues\": [\"there are three apples, "
        "the prompt asks for two\"],\n  \"edit\": \"remove one apple\"\n}\n```\nLet me know if you need more.",
        C("wrong", ["three apples", "a wooden table"], ["there are three apples, the prompt asks for two"],
          "remove one apple")),
    "JSON nested one level, null edit": (
        '{"critique": {"Verdict": "correct", "Observations": ["a yellow umbrella", "a green bicycle"], '
        '"Defects": [], "Edit": null}}',
        C("right", ["a yellow umbrella", "a green bicycle"])),
    "JSON with a boolean verdict": (
        '{"verdict": false, "defects": ["no text on the sign"], "fix": "write \'refloop\' on the sign"}',
        C("wrong", [], ["no text on the sign"], "write 'refloop' on the sign")),
    "yes / no verdicts": (
        "Does the image match? Verdict: No\nWhat is wrong: the bird is below the clock\n"
        "Fix: move the bird above the clock",
        C("wrong", [], ["the bird is below the clock"], "move the bird above the clock")),
    "yes is right": ("Verdict: Yes, the image matches the prompt.\nObservations: a lamp left of a sofa",
                     C("right", ["a lamp left of a sofa"])),
    "a final verdict in a sentence": (
        "Observations: two dogs, one in the snow\nProblems: only one dog is playing\n"
        "Final verdict: the image does not match the prompt.\nEdit: make the second dog play in the snow",
        C("wrong", ["two dogs, one in the snow"], ["only one dog is playing"],
          "make the second dog play in the snow")),
    "partially correct is wrong": (
        "Verdict: partially correct\nEdit instruction: add a red hat to the cat",
        C("wrong", [], [], "add a red hat to the cat")),
    "not correct is wrong": ("Assessment: not correct\nSuggested edit: make the car blue",
                             C("wrong", [], [], "make the car blue")),
    "regenerate in other words": (
        "Verdict: wrong\nIssues: the image is a blurry mess\nInstruction: Regenerate the image from scratch.",
        C("wrong", [], ["the image is a blurry mess"], REGENERATE)),
    "start over is regenerate": ("verdict: incorrect\nfix: start over", C("wrong", [], [], REGENERATE)),
    "right with 'Instruction: none'": ("Verdict: correct\nInstruction: none", C("right")),
    "right with 'Edit: N/A'": ("Observations: a red hat on a cat\nVerdict: Correct ✅\nEdit: N/A",
                               C("right", ["a red hat on a cat"])),
    "numbered fields": (
        "1. Observations: a blue car; a white house\n2. Issues: the car is parked behind the house\n"
        "3. Verdict: wrong\n4. Edit: move the car in front of the house",
        C("wrong", ["a blue car", "a white house"], ["the car is parked behind the house"],
          "move the car in front of the house")),
    "a list closed by a blank line, then chatter, then the rest": (
        "Defects:\n* the hat is green\n* the cat has no whiskers\n\nThinking about what matters most, the "
        "colour is the main problem.\n\nVerdict: wrong\nEdit: make the hat red",
        C("wrong", [], ["the hat is green", "the cat has no whiskers"], "make the hat red")),
    "thinking out loud before the fields": (
        "<think>\nThe prompt wants a cat. Is the verdict wrong? No, the cat is there.\n</think>\n"
        "Verdict: Right\nObservations: a cat", C("right", ["a cat"])),
    "whole line in bold, emoji": ("**Verdict: ❌ Incorrect**\n**Fix: add a skateboard under the cat**",
                                  C("wrong", [], [], "add a skateboard under the cat")),
}

UNREADABLE = {
    "no verdict at all": ("The image shows a cat wearing a blue hat. The hat should be red.", "no 'verdict:'"),
    "a verdict that says nothing": ("Verdict: maybe\nEdit: make the hat red", "'right' or 'wrong'"),
    "wrong without an instruction": ("Observations: a cat\nVerdict: Incorrect", "needs one edit"),
    "right with an instruction": ("Verdict: correct\nFix: make the hat brighter", "needs no edit"),
    "two verdicts that disagree": ("Verdict: wrong\nEdit: add a cat\nVerdict: right", "twice"),
    "broken JSON and no lines": ("```json\n{verdict: wrong, edit: add a cat\n```", "no 'verdict:'"),
    "fixes under a key that is no field": ("Verdict: wrong\nChanges:\n- make the hat red\n- add a skateboard",
                                           "needs one edit"),
}


@pytest.mark.parametrize("name", list(READABLE))
def test_what_vlms_write_is_read(name):
    text, expected = READABLE[name]
    assert parse_critique(text) == expected


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_what_cannot_be_read_says_why(name):
    text, message = UNREADABLE[name]
    with pytest.raises(CritiqueError, match=message):
        parse_critique(text)


def test_a_list_of_instructions_is_one_instruction():
    text = "Verdict: wrong\nInstruction:\n- make the hat red\n- add a skateboard"
    assert parse_critique(text).instruction == "make the hat red; add a skateboard"


def test_free_text_round_trips_through_text():
    for critique in [C("wrong", ["a cat", "a Blue hat"], ["the hat is blue"], "Make the hat red, please"),
                     C("right", ["a cat riding a skateboard"]), C("wrong", [], ["blurry"], REGENERATE),
                     C("right")]:
        assert parse_critique(critique.text) == critique


def test_only_the_shapeworld_task_checks_its_edit_grammar():
    text = "Verdict: Incorrect\nEdit: Make the hat red"
    assert parse_critique(text).instruction == "Make the hat red"
    with pytest.raises(CritiqueError, match="cannot read 'hat'"):
        ShapeWorldTask().parse_critique(text)
    assert ShapeWorldTask().parse_critique("VERDICT: WRONG\nEDIT: Add a  red circle.").instruction == "add a red circle"
    assert ShapeWorldTask().parse_critique("verdict: wrong\nfix: regenerate").instruction == REGENERATE


def test_the_embedded_models_reflections_parse_as_before():
    """Labels in the embedded model's format (right, wrong with an edit, regenerate on unreadable pixels)
    read back to themselves through the shapeworld task, and through the general parser."""
    scene = Scene(objects=(Obj(shape="square", color="blue", x=2, y=2, size=12),
                           Obj(shape="circle", color="red", x=40, y=40, size=12)))
    image = render_one(Scene(objects=(Obj(shape="triangle", color="green", x=20, y=20, size=12),)))
    image[40:52, 40:52] = (0, 0, 0)
    parsed = parse_image(image)
    labels = [label_critique(p, [as_parsed(o) for o in scene.objects])
              for p in ("a circle above a square", "a red circle and a blue square", "three circles")]
    labels.append(label_critique("a triangle", parsed.objects, parsed.blobs))
    assert {label.verdict for label in labels} == {"right", "wrong"} and labels[-1].instruction == REGENERATE
    for label in labels:
        assert ShapeWorldTask().parse_critique(label.text) == label == parse_critique(label.text)
